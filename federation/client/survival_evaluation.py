"""The survival release's statistics on the site's test partition: each record's status, time
interval and score bin (``federation.wire.survival_evaluation``), counted per cell and released
through ``client.evaluation.noisy_release`` as the binary release is."""

from __future__ import annotations

import numpy as np

from federation.client.evaluation import Members, Statistics, noisy_release
from federation.wire.evaluation import EVAL_PREFIX, Layout, key
from federation.wire.survival_evaluation import (
    EVENTS,
    HISTOGRAM,
    N_SCORE_BINS,
    RECORDS,
    STAT_SHARES,
    score_bins,
    table_shares,
    time_bins,
)


def survival_statistics(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
    edges: np.ndarray,
) -> Statistics:
    """The release's exact statistics (``outcome``: rows of time in days and event 0/1; ``edges``
    the score bins' from ``score_edges``), and each entry's weight (the square root of its
    share): the weighted vector has L2 sensitivity 1."""
    event = np.asarray(outcome[:, 1] > 0.5, dtype=np.int64)
    intervals = len(cuts) + 1
    flat = (event * intervals + time_bins(outcome[:, 0], cuts)) * N_SCORE_BINS
    flat += score_bins(score, edges)
    shares = table_shares(layout)
    names, values, weights = [], [], []
    for table, levels in layout.tables.items():
        for level in levels:
            rows = members[table] == level
            exact = {
                HISTOGRAM: np.bincount(flat[rows], minlength=2 * intervals * N_SCORE_BINS),
                RECORDS: [rows.sum()],
                EVENTS: [event[rows].sum()],
            }
            for statistic, cells in exact.items():
                names.append((key(EVAL_PREFIX, (*table, level), statistic), len(cells)))
                values.extend(float(v) for v in cells)
                weights.extend([np.sqrt(shares[table] * STAT_SHARES[statistic])] * len(cells))
    return names, np.array(values), np.array(weights)


def survival_release(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
    edges: np.ndarray,
    noise_multiplier: float,
) -> dict[str, float | list[float]]:
    """The release: every cell's histogram, records and events, with Gaussian noise of
    ``noise_multiplier`` on the unit-sensitivity weighted vector."""
    return noisy_release(
        *survival_statistics(outcome, score, members, layout, cuts, edges), noise_multiplier
    )
