"""A site's two evaluation releases of a model's scores on its test partition (layout and
sensitivity: ``federation.wire.evaluation``).

The exact statistics are computed here and leave only through one OpenDP Gaussian release per
message, after the ledger has admitted it. Scores come from whatever model the message carries:
the release is private for any model, so a crafted one learns no more than noise allows.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from federation.client.data import SiteTable
from federation.wire.evaluation import (
    EVAL_PREFIX,
    EVENTS,
    GROUP,
    HIST_NEG,
    HIST_POS,
    INTERSECTION,
    INTERSECTION_JOIN,
    LEVEL_JOIN,
    N_BINS,
    POOLED_TABLE,
    RANK_NEG,
    RANK_POS,
    RANKS_PREFIX,
    RECORDS,
    RESIDUALS,
    SQUARED_ERRORS,
    STAT_SHARES,
    Cell,
    Layout,
    RankRequest,
    Table,
    cdf_at,
    key,
    score_bins,
)
from federation.wire.spec import StudySpec
from privacy.noise import gaussian_release

Members = Mapping[Table, np.ndarray]  # per table, each test record's level


def members_of(table: SiteTable, spec: StudySpec) -> dict[tuple[str, str], np.ndarray]:
    """Per evaluation table, each test record's level (declared levels only)."""
    test = table.is_test
    members = {POOLED_TABLE: np.full(int(test.sum()), "all", dtype=object)}
    groups = {g: table.groups[g][test] for g in spec.study.groups}
    for column, levels in groups.items():
        members[(GROUP, column)] = levels
    for i, first in enumerate(spec.study.groups):
        for second in spec.study.groups[i + 1 :]:
            joined = np.array(
                [f"{a}{LEVEL_JOIN}{b}" for a, b in zip(groups[first], groups[second], strict=True)],
                dtype=object,
            )
            members[(INTERSECTION, f"{first}{INTERSECTION_JOIN}{second}")] = joined
    return members


Statistics = tuple[list[tuple[str, int]], np.ndarray, np.ndarray]  # (key, length), values, weights


def histogram_release(
    y: np.ndarray, p: np.ndarray, members: Members, layout: Layout, noise_multiplier: float
) -> dict[str, float | list[float]]:
    """Release 1: every cell's class histograms, records, events, residual and squared-error
    sums, with Gaussian noise of ``noise_multiplier`` on the unit-sensitivity weighted vector."""
    return noisy_release(*histogram_statistics(y, p, members, layout), noise_multiplier)


def rank_release(
    y: np.ndarray,
    p: np.ndarray,
    members: Members,
    layout: Layout,
    requests: Mapping[Cell, RankRequest],
    noise_multiplier: float,
) -> dict[str, float | list[float]]:
    """Release 2: per requested cell, the sums over its positives of ``cdf_neg(score) - center``
    and over its negatives of ``cdf_pos(score) - (1 - center)``, with Gaussian noise on the
    unit-sensitivity weighted vector."""
    return noisy_release(*rank_statistics(y, p, members, layout, requests), noise_multiplier)


def histogram_statistics(
    y: np.ndarray, p: np.ndarray, members: Members, layout: Layout
) -> Statistics:
    """Release 1's exact statistics, and each entry's weight (the square root of its share):
    the weighted vector has L2 sensitivity 1 (``federation.wire.evaluation``)."""
    y = np.asarray(y, dtype=np.int64)
    bins = score_bins(p)
    shares = layout.table_shares()
    names, values, weights = [], [], []
    for table, levels in layout.tables.items():
        for level in levels:
            rows = members[table] == level
            exact = {
                HIST_POS: np.bincount(bins[rows & (y == 1)], minlength=N_BINS),
                HIST_NEG: np.bincount(bins[rows & (y == 0)], minlength=N_BINS),
                RECORDS: [rows.sum()],
                EVENTS: [(rows & (y == 1)).sum()],
                RESIDUALS: [np.sum(y[rows] - p[rows])],
                SQUARED_ERRORS: [np.sum((p[rows] - y[rows]) ** 2)],
            }
            for statistic, cells in exact.items():
                names.append((key(EVAL_PREFIX, (*table, level), statistic), len(cells)))
                values.extend(float(v) for v in cells)
                weights.extend([np.sqrt(shares[table] * STAT_SHARES[statistic])] * len(cells))
    return names, np.array(values), np.array(weights)


def rank_statistics(
    y: np.ndarray,
    p: np.ndarray,
    members: Members,
    layout: Layout,
    requests: Mapping[Cell, RankRequest],
) -> Statistics:
    """Release 2's exact sums, each weighted by its table's share over its bound: a record adds
    to one of its cell's two sums per table, so the weighted vector has L2 sensitivity 1."""
    y = np.asarray(y, dtype=np.int64)
    shares = layout.table_shares(ranks=True)
    names, values, weights = [], [], []
    for cell, request in requests.items():
        in_cell = members[cell[:2]] == cell[2]
        bound = max(request.center, 1.0 - request.center)
        for statistic, label, cdf, center in (
            (RANK_POS, 1, request.cdf_neg, request.center),
            (RANK_NEG, 0, request.cdf_pos, 1.0 - request.center),
        ):
            scores = p[in_cell & (y == label)]
            names.append((key(RANKS_PREFIX, cell, statistic), 1))
            values.append(float(np.sum(cdf_at(scores, np.asarray(cdf)) - center)))
            weights.append(np.sqrt(shares[cell[:2]]) / bound)
    return names, np.array(values), np.array(weights)


def noisy_release(
    names: list[tuple[str, int]], values: np.ndarray, weights: np.ndarray, noise: float
) -> dict[str, float | list[float]]:
    """One Gaussian release of the weighted vector (unit L2 sensitivity), back in natural units;
    histograms stay lists, single statistics become numbers."""
    if not len(values):
        return {}
    released = gaussian_release(values * weights, 1.0, noise) / weights
    record: dict[str, float | list[float]] = {}
    start = 0
    for name, length in names:
        part = released[start : start + length]
        record[name] = [float(v) for v in part] if length > 1 else float(part[0])
        start += length
    return record
