"""Private bounds for numeric columns the study declares none for: a DP histogram on a fixed grid.

Pooled standardization under DP needs each column's bounds (they make the sums' sensitivity
known). Where the spec declares none, each site releases, per such column, the counts of its
training values in the bins of ``GRID``: a symmetric log-scale grid fixed before any data is
seen (zero, then 0.1 to 1e6 in either sign, ten edges a decade: finer bins near zero would
each hold too few values to stand out of the noise), so that the bins reveal
nothing by their placement. The server sums the sites' noisy counts and takes the bin edges
around the ``LOW_QUANTILE`` and ``HIGH_QUANTILE`` of the pooled counts as the column's bounds
(``estimate_bounds``), reading the counts at a coarser grid (merged bins) where the noise hides
the fine one; values beyond them are then clipped, as they are for declared bounds.

Budget: the release is one Gaussian mechanism, accounted as ``GaussianRelease(z, 1.0, 1)`` and
composed, before the standardization sums, with everything else the site releases in the run;
``BOUNDS_SHARE`` of the study's zCDP budget (``planner.share_noise(BOUNDS_SHARE, epsilon,
delta)``) gives ``z``. Each column's histogram ends with a bin for the missing values, so one
record adds 1 to exactly one bin of each column and the vector of all columns' counts has L2
sensitivity sqrt(J) for J columns (``release_histograms``); the missing bin costs nothing and
tells the server how many values the other bins should hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from privacy.noise import gaussian_release

EDGES_PER_DECADE = 10
_EXPONENTS = np.arange(-1 * EDGES_PER_DECADE, 6 * EDGES_PER_DECADE + 1) / EDGES_PER_DECADE
_MAGNITUDES = 10.0**_EXPONENTS
GRID = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])  # bin edges, increasing
N_VALUE_BINS = len(GRID) + 1  # with the two open-ended bins below and above the grid
MISSING_BIN = N_VALUE_BINS  # after the value bins: the records without a value
N_BINS = N_VALUE_BINS + 1  # released per column
BOUNDS_SHARE = 0.05
LOW_QUANTILE, HIGH_QUANTILE = 0.01, 0.99
MIN_KEPT = 0.8  # of the present values, in bins above the noise, for a column to get bounds
_Z = 3.5  # pooled counts below this many noise SDs are taken as empty (180 bins: noise alone
# passes 3.5 SDs in one of them in 4% of columns, and then one bin past the data at most)
_CLEAR = 5.0  # a bin this many noise SDs up is data wherever it lies (noise alone: 3 in 10^7)


def bin_counts(values: np.ndarray) -> np.ndarray:
    """Counts per column (rows of the result) and bin of ``values`` (records x columns): bin
    k < ``MISSING_BIN`` holds values in [GRID[k-1], GRID[k]), ``MISSING_BIN`` the missing ones
    (NaN)."""
    values = np.asarray(values, dtype=float)
    counts = np.zeros((values.shape[1], N_BINS))
    for j in range(values.shape[1]):
        column = values[:, j]
        bins = np.where(np.isnan(column), MISSING_BIN, np.searchsorted(GRID, column, side="right"))
        counts[j] = np.bincount(bins, minlength=N_BINS)
    return counts


def histogram_sensitivity(n_columns: int) -> float:
    """L2 sensitivity of ``bin_counts`` flattened: one record is in one bin per column."""
    return math.sqrt(n_columns)


def release_histograms(counts: np.ndarray, noise_multiplier: float) -> np.ndarray:
    """``counts`` (columns x bins) plus OpenDP Gaussian noise of SD ``noise_multiplier *
    sqrt(columns)`` on every bin: one release of unit noise multiplier per its sensitivity."""
    sensitivity = histogram_sensitivity(counts.shape[0])
    return gaussian_release(counts, sensitivity, noise_multiplier)


def histogram_noise_sd(n_columns: int, noise_multiplier: float, n_sites: int) -> float:
    """SD of the noise on a bin of the sites' pooled (summed) counts."""
    return noise_multiplier * histogram_sensitivity(n_columns) * math.sqrt(n_sites)


def pooled_bounds(
    histograms: Sequence[np.ndarray], noise_multipliers: Sequence[float], n_records: int
) -> list[tuple[float, float] | None]:
    """Per column, the bounds ``estimate_bounds`` reads from the sites' released histograms
    (each site's flattened or columns x ``N_BINS``, made with its noise multiplier, in order),
    pooled by summing; ``n_records`` is those sites' public training-record total."""
    if not histograms:
        return []
    rows = [np.reshape(np.asarray(h, dtype=float), (-1, N_BINS)) for h in histograms]
    sensitivity = histogram_sensitivity(rows[0].shape[0])
    noise_sd = math.sqrt(sum((z * sensitivity) ** 2 for z in noise_multipliers))
    return estimate_bounds(sum(rows), noise_sd, n_records)


def estimate_bounds(
    pooled: np.ndarray,
    noise_sd: float,
    n_records: int,
    low_quantile: float = LOW_QUANTILE,
    high_quantile: float = HIGH_QUANTILE,
) -> list[tuple[float, float] | None]:
    """Per column of pooled noisy counts, the grid edges around its low and high quantiles, or
    None where the noise leaves too few counts to place them (post-processing only: no privacy
    cost).

    Bins with counts under ``_Z`` noise SDs are taken as empty, so the noise in the many empty
    bins does not move the quantiles. Where too few of the records stand out of the noise on
    the grid (a small cohort, a strict budget, values spread over many bins), the same counts
    are read at a coarser grid (``RESOLUTIONS``: adjacent bins merged, which adds their counts
    and their noise only in quadrature), the finest that places the records, as long as all
    the records in one merged bin would stand ``_MIN_SIGNAL`` noise SDs out (coarser, a noisy
    empty group passes the threshold as often, and the records no longer outweigh it). The
    bounds then reach out over the tails' bins that the threshold dropped (``_reach``), and one bin
    further; an open-ended bin's bound is the grid's last edge.

    ``n_records`` is the sites' public training-record total; less the pooled missing bin, it
    is the column's count of present values. Where the bins that stand out of the noise hold
    under ``MIN_KEPT`` of those at every resolution (values of order 1 that cross zero, spread
    thinly over this grid), the column gets None rather than bounds that would clip much of it.
    Where even all the records in one bin would not stand out of the noise, a bin that does is
    noise, and no column gets bounds."""
    rows = np.asarray(pooled, dtype=float)
    if n_records < _Z * noise_sd:
        return [None] * len(rows)
    return [_column_bounds(row, noise_sd, n_records, low_quantile, high_quantile) for row in rows]


def _column_bounds(
    row: np.ndarray, noise_sd: float, n_records: int, low_quantile: float, high_quantile: float
) -> tuple[float, float] | None:
    """One column's bounds, where some resolution's bins above the noise hold ``MIN_KEPT`` of
    its present values (the records less the missing ones that stand out of the noise): at
    the finest that holds nearly (``_FULL``) as many as the one that holds the most."""
    values, missing = row[:MISSING_BIN], row[MISSING_BIN]
    # Missing values as many as stand out of the noise (as a value bin is read): noise in
    # the missing bin must not lower the share of values the column needs.
    present = min(max(n_records - missing + _Z * noise_sd, 0.0), float(n_records))
    readings = [r for merged in RESOLUTIONS if (r := _read(values, merged, noise_sd, present))]
    most = max((r[1].sum() for r in readings), default=0.0)
    if not readings or most < MIN_KEPT * present:
        return None
    finest = next(r for r in readings if r[1].sum() >= _FULL * most)
    return _edges(values, *finest, noise_sd, low_quantile, high_quantile)


def _read(
    row: np.ndarray, merged: int, noise_sd: float, present: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The groups of ``merged`` value bins and their counts taken as data, or None where this
    resolution cannot tell the ``present`` values from the noise."""
    groups = _GROUPS[merged]
    group_sd = noise_sd * np.sqrt(np.bincount(groups))
    if present < _MIN_SIGNAL * group_sd.max():
        return None  # a group of noise could pass for the records
    counts = np.bincount(groups, weights=row)
    kept = _around_the_mode(np.where(counts > _Z * group_sd, counts, 0.0))
    clear = counts > _CLEAR * group_sd  # e.g. an indicator's 0 and 1, a decade apart here
    kept[clear] = counts[clear]
    noise_of_total = noise_sd * math.sqrt(np.bincount(groups)[kept > 0].sum())
    if kept.sum() <= 0 or kept.sum() > present + _Z * noise_of_total:
        return None  # nothing above the noise, or noise taken as data
    return groups, kept


def _edges(
    row: np.ndarray,
    groups: np.ndarray,
    kept: np.ndarray,
    noise_sd: float,
    low_quantile: float,
    high_quantile: float,
) -> tuple[float, float] | None:
    """The grid edges around the quantiles of ``kept``, reaching over the thin tails."""
    cumulative = np.cumsum(kept) / kept.sum()
    low_group = int(np.searchsorted(cumulative, low_quantile, side="right"))
    high_group = int(np.searchsorted(cumulative, high_quantile, side="left"))
    first = int(np.flatnonzero(groups == low_group)[0])
    last = int(np.flatnonzero(groups == high_group)[-1])
    first -= _reach(row[first - 1 :: -1] if first else row[:0], noise_sd)
    last += _reach(row[last + 1 :], noise_sd)
    # One bin more on either side; bin k holds [GRID[k-1], GRID[k]).
    low, high = GRID[max(first - 2, 0)], GRID[min(last + 1, len(GRID) - 1)]
    return (float(low), float(high)) if low < high else None


def _reach(beyond: np.ndarray, noise_sd: float) -> int:
    """How many of the bins ``beyond`` an edge (nearest first) the tail still fills: the most,
    up to ``_MAX_REACH``, whose summed counts stand ``_TAIL_Z`` noise SDs out. A tail spread
    thinly over several bins stands out only when they are added up; noise that passes this
    widens the bounds by a few bins, which costs the sums a little precision and clips
    nothing."""
    reach = 0
    sums = np.cumsum(beyond[:_MAX_REACH])
    for j, total in enumerate(sums, start=1):
        if total > _TAIL_Z * noise_sd * math.sqrt(j):
            reach = j
    return reach


def _merged_groups(merged: int) -> np.ndarray:
    """The group of every value bin when ``merged`` adjacent bins are read as one: from zero outward
    on either side (so that a decade is one group at ``merged`` = ``EDGES_PER_DECADE``), the
    two bins next to zero and the two open-ended bins on their own; groups numbered in order."""
    zero = int(np.searchsorted(GRID, 0.0))  # GRID[zero] == 0: bins zero and zero + 1 touch it
    below = (zero - 1 - np.arange(1, zero)) // merged  # bins 1 .. zero - 1, outward from zero
    above = (np.arange(zero + 2, N_VALUE_BINS - 1) - zero - 2) // merged
    n_below = int(below.max()) + 1
    groups = np.empty(N_VALUE_BINS, dtype=int)
    groups[0] = 0
    groups[1:zero] = n_below - below
    groups[zero] = n_below + 1
    groups[zero + 1] = n_below + 2
    groups[zero + 2 : N_VALUE_BINS - 1] = n_below + 3 + above
    groups[N_VALUE_BINS - 1] = groups[N_VALUE_BINS - 2] + 1
    return groups


RESOLUTIONS = (1, 2, 5, EDGES_PER_DECADE)  # bins read as one, finest first
_GROUPS = {merged: _merged_groups(merged) for merged in RESOLUTIONS}
_MAX_REACH, _TAIL_Z = 4, 2.0
_MIN_SIGNAL = 5.0
_FULL = 0.95  # of the records above the noise: a resolution that clips next to nothing


def _around_the_mode(kept: np.ndarray, gap: int = 2) -> np.ndarray:
    """The run of bins above the noise that holds the largest one, bridging up to ``gap``
    empty bins: an isolated bin far from the data is noise (one of the grid's 143 bins passes
    the threshold by chance in about 3% of columns) and must not stretch the bounds to it."""
    if not kept.any():
        return kept
    nonzero = np.flatnonzero(kept)
    mode = int(np.argmax(kept))
    position = int(np.searchsorted(nonzero, mode))
    first = last = position
    while first > 0 and nonzero[first] - nonzero[first - 1] <= gap + 1:
        first -= 1
    while last < len(nonzero) - 1 and nonzero[last + 1] - nonzero[last] <= gap + 1:
        last += 1
    out = np.zeros_like(kept)
    run = nonzero[first : last + 1]
    out[run] = kept[run]
    return out
