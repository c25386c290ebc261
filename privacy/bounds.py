"""Private bounds for numeric columns the study declares none for: a DP histogram on a fixed grid.

Pooled standardization under DP needs each column's bounds (they make the sums' sensitivity
known). Where the spec declares none, each site releases, per such column, the counts of its
training values in the bins of ``GRID``: a symmetric log-scale grid fixed before any data is
seen (zero, then 0.1 to 1e6 in either sign, ten edges a decade: finer bins near zero would
each hold too few values to stand out of the noise), so that the bins reveal
nothing by their placement. The server sums the sites' noisy counts and takes the bin edges
around the ``LOW_QUANTILE`` and ``HIGH_QUANTILE`` of the pooled counts as the column's bounds
(``estimate_bounds``); values beyond them are then clipped, as they are for declared bounds.

Budget: the release is one Gaussian mechanism, accounted as ``GaussianRelease(z, 1.0, 1)`` and
composed, before the standardization sums, with everything else the site releases in the run;
``BOUNDS_SHARE`` of the study's zCDP budget (``planner.share_noise(BOUNDS_SHARE, epsilon,
delta)``) gives ``z``. One record adds 1 to one bin of each column where it has a value, so the
vector of all columns' counts has L2 sensitivity sqrt(J) for J columns (``release_histograms``).
"""

from __future__ import annotations

import math

import numpy as np

from privacy.noise import gaussian_release

EDGES_PER_DECADE = 10
_EXPONENTS = np.arange(-1 * EDGES_PER_DECADE, 6 * EDGES_PER_DECADE + 1) / EDGES_PER_DECADE
_MAGNITUDES = 10.0**_EXPONENTS
GRID = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])  # bin edges, increasing
N_BINS = len(GRID) + 1  # with the two open-ended bins below and above the grid
BOUNDS_SHARE = 0.05
LOW_QUANTILE, HIGH_QUANTILE = 0.01, 0.99
MIN_KEPT = 0.8  # of the records, in bins above the noise, for a column to get bounds
_Z = 3.5  # pooled counts below this many noise SDs are taken as empty (180 bins: noise alone
# passes 3.5 SDs in one of them in 4% of columns, and then one bin past the data at most)
_CLEAR = 6.0  # a bin this many noise SDs up is data wherever it lies (noise alone: 1 in 10^9)


def bin_counts(values: np.ndarray) -> np.ndarray:
    """Counts per column (rows of the result) and bin of ``values`` (records x columns); a
    missing value (NaN) counts in no bin. Bin k holds values in [GRID[k-1], GRID[k])."""
    values = np.asarray(values, dtype=float)
    counts = np.zeros((values.shape[1], N_BINS))
    for j in range(values.shape[1]):
        column = values[:, j]
        column = column[~np.isnan(column)]
        counts[j] = np.bincount(np.searchsorted(GRID, column, side="right"), minlength=N_BINS)
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


def estimate_bounds(
    pooled: np.ndarray,
    noise_sd: float,
    n_records: int,
    low_quantile: float = LOW_QUANTILE,
    high_quantile: float = HIGH_QUANTILE,
) -> list[tuple[float, float] | None]:
    """Per column of pooled noisy counts, the grid edges around its low and high quantiles, or
    None where the noise leaves too few counts to place them (post-processing only: no privacy
    cost). Bins with counts under ``_Z`` noise SDs are taken as empty, so the noise in the many
    empty bins does not move the quantiles, and the bounds reach one bin further on either side
    for the tails' bins that this drops; an open-ended bin's bound is the grid's last edge.
    ``n_records`` is the sites' public training-record total: where the bins that stand out of
    the noise hold under ``MIN_KEPT`` of it (values spread thinly over many bins, as values of
    order 1 that cross zero are on this grid), the column gets None rather than bounds that
    would clip much of it. Where even all the records in one bin would not stand out of the
    noise, a bin that does is noise, and no column gets bounds."""
    rows = np.asarray(pooled, dtype=float)
    if n_records < _Z * noise_sd:
        return [None] * len(rows)
    bounds: list[tuple[float, float] | None] = []
    for row in rows:
        kept = _around_the_mode(np.where(row > _Z * noise_sd, row, 0.0))
        clear = row > _CLEAR * noise_sd  # e.g. an indicator's 0 and 1, a decade apart here
        kept[clear] = row[clear]
        total = kept.sum()
        plausible = MIN_KEPT * n_records <= total <= n_records + _Z * noise_sd
        if not plausible or total <= 0:  # too little above the noise, or noise taken as data
            bounds.append(None)
            continue
        cumulative = np.cumsum(kept) / total
        low_bin = int(np.searchsorted(cumulative, low_quantile, side="right"))
        high_bin = int(np.searchsorted(cumulative, high_quantile, side="left"))
        # One bin more on either side: the bins under the threshold are the tails' ones.
        low = GRID[max(low_bin - 2, 0)]
        high = GRID[min(high_bin + 1, len(GRID) - 1)]
        bounds.append((float(low), float(high)) if low < high else None)
    return bounds


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
