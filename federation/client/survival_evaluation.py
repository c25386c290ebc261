"""The survival releases' statistics on the site's test partition
(``federation.wire.survival_evaluation``): release 1 counts each record's status, time interval
and score bin per cell; release 2 sums each record's concordance term against the aggregator's
request. Both leave through ``client.evaluation.noisy_release``, as the binary releases do."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from federation.client.evaluation import Members, Statistics, noisy_release
from federation.wire.evaluation import EVAL_PREFIX, RANKS_PREFIX, Cell, Layout, key
from federation.wire.survival_evaluation import (
    CONCORDANCE,
    EARLIER_EVENTS,
    EVENTS,
    HISTOGRAM,
    LATER,
    N_SCORE_BINS,
    RECORDS,
    STAT_SHARES,
    WITHIN,
    WITHIN_EVENTS,
    ConcordanceRequest,
    score_bins,
    score_grid,
    share_after,
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


def concordance_terms(
    outcome: np.ndarray, score: np.ndarray, cuts: tuple[float, ...], grid: np.ndarray,
    request: ConcordanceRequest,
) -> np.ndarray:  # fmt: skip
    """Each record's term ``X - c Y`` of release 2 (``wire.survival_evaluation``), clipped to
    ``max(c, 1 - c)`` whatever the request holds: its share of concordant comparable pairs
    against the request's records, less ``c`` times its share of comparable pairs. Its own
    interval's records count as later than it in the share of the interval after its time
    (``share_after``), its events as earlier in the rest."""
    event = outcome[:, 1] > 0.5
    interval = time_bins(outcome[:, 0], cuts)
    after = share_after(outcome[:, 0], cuts)
    shares = request.shares(len(cuts) + 1)
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)

    def below(name: str) -> np.ndarray:  # each record's interval's share at its score
        return _at_scores(score, interval, grid, shares[name])

    def total(name: str) -> np.ndarray:
        return shares[name][interval, -1]

    partners_lower = below(LATER) + after * below(WITHIN)
    partners = total(LATER) + after * total(WITHIN)
    earlier_lower = below(EARLIER_EVENTS) + (1 - after) * below(WITHIN_EVENTS)
    earlier = total(EARLIER_EVENTS) + (1 - after) * total(WITHIN_EVENTS)
    concordant = np.where(event, partners_lower, 0.0) + earlier - earlier_lower
    comparable = np.where(event, partners, 0.0) + earlier
    bound = max(request.center, 1.0 - request.center)
    return np.clip(concordant - request.center * comparable, -bound, bound)


def concordance_statistics(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
    edges: np.ndarray,
    requests: Mapping[Cell, ConcordanceRequest],
) -> Statistics:
    """Release 2's exact sums, one per requested cell, each weighted by its table's share over
    its bound: a record adds one bounded term to one cell per table, so the weighted vector has
    L2 sensitivity 1."""
    shares = layout.table_shares(ranks=True)
    grid = score_grid(edges)
    names, values, weights = [], [], []
    for cell, request in requests.items():
        in_cell = members[cell[:2]] == cell[2]
        terms = concordance_terms(outcome[in_cell], score[in_cell], cuts, grid, request)
        names.append((key(RANKS_PREFIX, cell, CONCORDANCE), 1))
        values.append(float(terms.sum()))
        weights.append(np.sqrt(shares[cell[:2]]) / max(request.center, 1.0 - request.center))
    return names, np.array(values), np.array(weights)


def concordance_release(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
    edges: np.ndarray,
    requests: Mapping[Cell, ConcordanceRequest],
    noise_multiplier: float,
) -> dict[str, float | list[float]]:
    """Release 2: per requested cell its concordance sum, with Gaussian noise of
    ``noise_multiplier`` on the unit-sensitivity weighted vector."""
    return noisy_release(
        *concordance_statistics(outcome, score, members, layout, cuts, edges, requests),
        noise_multiplier,
    )


def _at_scores(
    score: np.ndarray, interval: np.ndarray, grid: np.ndarray, shares: np.ndarray
) -> np.ndarray:
    """Each record's interval's cumulative shares at its score (linear between the grid's
    points, the end values beyond them)."""
    out = np.zeros(len(score))
    for k in np.unique(interval):
        rows = interval == k
        out[rows] = np.interp(score[rows], grid, shares[k])
    return out
