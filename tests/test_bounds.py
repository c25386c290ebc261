"""Private bounds from a DP histogram on a fixed grid: sensitivity, and bounds that hold."""

import numpy as np
import pytest

from privacy.bounds import (
    _GROUPS,
    EDGES_PER_DECADE,
    GRID,
    MISSING_BIN,
    N_BINS,
    bin_counts,
    estimate_bounds,
    histogram_noise_sd,
    histogram_sensitivity,
    pooled_bounds,
    release_histograms,
)
from privacy.planner import share_noise


def columns(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.normal(52, 10, n),  # age
            np.where(rng.random(n) < 0.1, np.nan, rng.lognormal(5.3, 0.2, n)),  # a lab value
            rng.normal(0.9, 1.1, n),  # crosses zero
        ]
    )


def test_one_record_moves_the_histograms_by_at_most_their_sensitivity():
    values = columns(80)
    values[3] = [1e9, np.nan, -1e-9]  # past the grid, missing, next to zero
    full = bin_counts(values)
    moved = [np.linalg.norm(full - bin_counts(np.delete(values, i, axis=0))) for i in range(80)]
    # Every record, a missing value too, is in exactly one bin of each column.
    assert max(moved) == pytest.approx(histogram_sensitivity(3))
    assert min(moved) == pytest.approx(histogram_sensitivity(3))


def test_counts_land_in_the_grid_bins():
    counts = bin_counts(np.array([[GRID[0] - 1], [0.0], [GRID[-1]], [np.nan]]))
    assert counts.shape == (1, N_BINS) and counts.sum() == 4
    assert counts[0, 0] == 1 and counts[0, MISSING_BIN - 1] == 1 and counts[0, MISSING_BIN] == 1
    assert counts[0, int(np.searchsorted(GRID, 0.0, side="right"))] == 1


def test_a_column_missing_in_most_records_gets_bounds_for_its_present_values():
    """A lab value measured in 40% of 3 sites x 1,000 records at epsilon 3: the missing bin
    says how many values there are, and the bounds hold them (read against all the records,
    as before the missing bin, the 40% could never make the 80% a column needs)."""
    rng = np.random.default_rng(2)
    noise = share_noise(0.05, 3.0, 1e-5)
    sites = [
        np.where(rng.random((1000, 1)) < 0.6, np.nan, rng.lognormal(5.3, 0.2, (1000, 1)))
        for _ in range(3)
    ]
    values = np.concatenate(sites)
    present = values[~np.isnan(values)]
    found = 0
    for _ in range(50):
        pooled = sum(bin_counts(s) + rng.normal(0.0, noise, (1, N_BINS)) for s in sites)
        (bounds,) = estimate_bounds(pooled, histogram_noise_sd(1, noise, 3), 3000)
        if bounds is not None:
            found += 1
            assert np.mean((present >= bounds[0]) & (present <= bounds[1])) >= 0.98
            assert bounds[1] - bounds[0] < 10 * (
                np.percentile(present, 99) - np.percentile(present, 1)
            )
        without_count = pooled.copy()
        without_count[0, MISSING_BIN] = 0.0  # every record taken for a value
        assert estimate_bounds(without_count, histogram_noise_sd(1, noise, 3), 3000) == [None]
    assert found >= 48


def test_a_column_with_no_value_at_all_has_no_bounds():
    rng = np.random.default_rng(8)
    empty = bin_counts(np.full((500, 1), np.nan)) + rng.normal(0.0, 5.0, (1, N_BINS))
    assert estimate_bounds(empty, 5.0, 500) == [None]


def test_estimated_bounds_enclose_the_central_values():
    """At epsilon 3 and 3 sites of 1000 records (the noise drawn here, seeded, with the
    release's SD), over 100 draws: the bounds clip a few percent at most, and are at most a
    decade or so wider than the values."""
    rng = np.random.default_rng(11)
    sites = [columns(1000, seed=k) for k in range(3)]
    noise = share_noise(0.05, 3.0, 1e-5)
    values = np.concatenate(sites)
    for _ in range(100):
        pooled = sum(
            bin_counts(s) + rng.normal(0.0, noise * histogram_sensitivity(3), (3, N_BINS))
            for s in sites
        )
        bounds = estimate_bounds(pooled, histogram_noise_sd(3, noise, 3), 3000)
        assert bounds[0] is not None and bounds[1] is not None
        for j, found in enumerate(bounds):
            if found is None:  # values of order 1 across zero spread thin over the bins
                assert j == 2
                continue
            low, high = found
            present = values[:, j][~np.isnan(values[:, j])]
            inside = np.mean((present >= low) & (present <= high))
            assert inside >= (0.8 if j == 2 else 0.95)  # a few percent at most
            assert high - low < 10 * (np.percentile(present, 99) - np.percentile(present, 1))


def test_a_column_the_noise_swamps_has_no_bounds():
    sparse = release_histograms(bin_counts(columns(15)), 40.0)
    assert estimate_bounds(sparse, histogram_noise_sd(3, 40.0, 1), 15) == [None, None, None]


def test_noise_bins_are_never_taken_for_a_small_cohort():
    """Pure noise passes the threshold in a few bins of many columns; with fewer records than
    the threshold, none of them may become bounds (this once passed about 1 draw in 14)."""
    rng = np.random.default_rng(7)
    noise_sd = histogram_noise_sd(3, 40.0, 1)
    for _ in range(200):
        noise = rng.normal(0.0, noise_sd, (3, N_BINS))
        assert estimate_bounds(noise, noise_sd, 15) == [None, None, None]


def test_a_small_cohort_spread_over_many_bins_is_read_at_a_coarser_grid():
    """500 ages over 6 fine bins at a noise that hides most of them: merged bins stand out."""
    rng = np.random.default_rng(3)
    ages = rng.normal(55, 9, (500, 1))
    noise_sd = 40.0  # under 150 ages a fine bin: under 3.5 noise SDs
    found = 0
    for _ in range(50):
        noisy = bin_counts(ages) + rng.normal(0.0, noise_sd, (1, N_BINS))
        (bounds,) = estimate_bounds(noisy, noise_sd, 500)
        if bounds is not None:
            found += 1
            assert np.mean((ages >= bounds[0]) & (ages <= bounds[1])) >= 0.95
            assert bounds[0] >= 10 and bounds[1] <= 260  # a decade or so, not the grid's ends
    assert found >= 40  # read at the fine grid alone: under 25


def test_coarser_grids_never_take_noise_for_the_records():
    """Where merged bins' noise would be as large as the records, they are not read: pure
    noise at 500 records gets no bounds (without the rule, a noisy decade of negative values
    passed in about 1 draw in 10)."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        noise = rng.normal(0.0, 60.0, (1, N_BINS))
        assert estimate_bounds(noise, 60.0, 500) == [None]


def test_a_thin_tail_is_inside_the_bounds():
    """A tail of 5% over two bins that each fall under the threshold (ages 18 to 25 of a
    cohort of 18 to 90, as the synthetic cohort's, at epsilon 3) is reached."""
    rng = np.random.default_rng(4)
    body = rng.uniform(25.2, 90, 2200)
    tail = rng.uniform(18, 25, 110)
    ages = np.concatenate([body, tail])[:, None]
    noise_sd = 32.0
    inside = []
    for _ in range(20):
        noisy = bin_counts(ages) + rng.normal(0.0, noise_sd, (1, N_BINS))
        ((low, high),) = estimate_bounds(noisy, noise_sd, len(ages))
        inside.append(np.mean((ages >= low) & (ages <= high)))
    assert np.mean(np.array(inside) >= 0.99) >= 0.5  # one bin beyond the run alone: never


def test_coarser_grids_merge_bins_into_decades_from_zero():
    groups = _GROUPS[EDGES_PER_DECADE]
    starts = [int(np.flatnonzero(groups == g)[0]) for g in range(1, groups.max())]
    lower_edges = [GRID[k - 1] for k in starts]
    assert lower_edges == [-1e6, -1e5, -1e4, -1e3, -100, -10, -1, -0.1, 0, 0.1, 1, 10, 100,
                           1e3, 1e4, 1e5]  # fmt: skip


def test_pooled_bounds_sum_the_sites_releases_with_their_noise():
    """The server's pooling: the sites' flattened releases summed, the noise SD of each at its
    own multiplier added in quadrature, as ``estimate_bounds`` reads them."""
    sites = [columns(1000, seed=k) for k in range(3)]
    noises = [4.0, 5.0, 6.0]
    released = [release_histograms(bin_counts(s), z) for s, z in zip(sites, noises, strict=True)]
    pooled = sum(released)
    noise_sd = np.sqrt(sum((z * histogram_sensitivity(3)) ** 2 for z in noises))
    expected = estimate_bounds(pooled, noise_sd, 3000)
    assert pooled_bounds([r.ravel().tolist() for r in released], noises, 3000) == expected
    assert expected[0] is not None
    assert pooled_bounds([], [], 0) == []
