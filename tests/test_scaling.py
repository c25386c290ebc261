"""Federated standardization under DP: the release's sensitivity, and pooling that works or
says it did not."""

import math

import numpy as np
import pytest

from federation.client.data import SiteTable
from federation.client.features import scaling_sums
from federation.server.standardization import pooled_scaling
from federation.wire.spec import parse_spec
from privacy.scaling import release_scaling_sums, scaling_noise_sd, scaling_weights

SPEC = parse_spec(
    """
[study]
label = "y"
[features]
numeric = ["age", "sbp", "chol"]
missing = { sbp = "impute" }
bounds = { age = [18, 90], sbp = [80, 220], chol = [100, 400] }
"""
)
COLUMNS = ["age", "sbp", "chol"]


def table(n: int, seed: int = 0, test_share: float = 0.0) -> SiteTable:
    rng = np.random.default_rng(seed)
    numeric = np.column_stack(
        [
            rng.normal(52, 15, n),  # past both bounds now and then
            np.where(rng.random(n) < 0.2, np.nan, rng.normal(123, 16, n)),
            rng.normal(196, 38, n),
        ]
    )
    return SiteTable(
        numeric=numeric,
        categorical=np.zeros((n, 0), dtype=int),
        label=(rng.random(n) < 0.3).astype(np.float32),
        is_test=rng.random(n) < test_share,
        groups={},
    )


def test_one_record_moves_the_weighted_sums_by_at_most_one():
    """The privacy claim itself: the weighted vector the release adds unit noise to moves by at
    most 1 in L2 when any one record is removed (values past the bounds and missing ones too)."""
    site = table(60, seed=1)
    site.numeric[0] = [95.0, 230.0, 100.0]  # at (or past) a bound in every column: the worst case
    weights = scaling_weights(len(COLUMNS))
    full = np.concatenate(scaling_sums(site, SPEC)) * weights
    moved = []
    for i in range(60):
        keep = np.arange(60) != i
        fewer = SiteTable(site.numeric[keep], site.categorical[keep], site.label[keep],
                          site.is_test[keep], {})  # fmt: skip
        moved.append(np.linalg.norm(full - np.concatenate(scaling_sums(fewer, SPEC)) * weights))
    assert max(moved) <= 1.0 + 1e-9
    assert max(moved) == pytest.approx(1.0)  # and reached: the weights waste no budget


def test_release_adds_the_stated_noise():
    sums = scaling_sums(table(500), SPEC)
    draws = np.array([np.concatenate(release_scaling_sums(sums, 2.0)) for _ in range(400)])
    sd_sum, sd_squares, sd_count = scaling_noise_sd(3, 2.0)
    expected = np.repeat([sd_sum, sd_squares, sd_count], 3)
    assert draws.std(axis=0) == pytest.approx(expected, rel=0.15)
    assert draws.mean(axis=0) == pytest.approx(np.concatenate(sums), abs=4 * sd_count / 20)


def pool(sites, noise):
    released = [
        release_scaling_sums(scaling_sums(s, SPEC), noise) if noise else scaling_sums(s, SPEC)
        for s in sites
    ]
    return pooled_scaling(
        SPEC,
        COLUMNS,
        [r[0] for r in released],
        [r[1] for r in released],
        [r[2] for r in released],
        noise_multipliers=[noise or 1e-9] * len(sites),
        n_train=[s.n_train for s in sites],
    )


def test_pooled_scaling_recovers_the_pooled_center_and_scale():
    sites = [table(2000, seed=k) for k in range(3)]
    values = np.concatenate([s.numeric for s in sites])
    for i, (low, high) in enumerate([(18, 90), (80, 220), (100, 400)]):
        values[:, i] = np.clip(values[:, i], low, high)
    exact = pool(sites, 0.0)
    assert exact.center == pytest.approx(np.nanmean(values, axis=0).tolist(), rel=1e-9)
    assert exact.scale == pytest.approx(np.nanstd(values, axis=0).tolist(), rel=1e-9)
    assert exact.warnings == {}
    noisy = pool(sites, 2.0)  # noise SE of the scale about 2% here: 5 SE
    assert noisy.center == pytest.approx(exact.center, rel=0.02)
    assert noisy.scale == pytest.approx(exact.scale, rel=0.1)
    assert noisy.warnings == {}


def test_implausible_sums_are_a_warning_not_a_silent_fallback():
    sites = [table(40, seed=k) for k in range(4)]
    result = pool(sites, 60.0)
    assert set(result.warnings) == set(COLUMNS)
    assert all("noise" in problem for problem in result.warnings.values())
    assert all(math.isfinite(s) and s > 0 for s in result.scale)


def test_pooling_noisy_sums_needs_the_noise():
    with pytest.raises(ValueError, match="noise multiplier"):
        pooled_scaling(SPEC, COLUMNS, [[0.0] * 3], [[0.0] * 3], [[10.0] * 3])
