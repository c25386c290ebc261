"""The site's epsilon against Google's dp-accounting as an independent oracle."""

import time
import warnings

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from privacy.accounting import (
    GaussianRelease,
    calibrate_noise,
    compute_epsilon,
    dumps_releases,
    epsilon_trajectory,
    loads_releases,
    make_accountant,
    merged,
)

DELTA = 1e-5


def oracle_epsilon(releases, delta, accountant):
    event = dp_accounting.ComposedDpEvent(
        [
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    r.sample_rate, dp_accounting.GaussianDpEvent(r.noise_multiplier)
                )
                if r.sample_rate < 1
                else dp_accounting.GaussianDpEvent(r.noise_multiplier),
                r.steps,
            )
            for r in releases
        ]
    )
    if accountant == "prv":
        oracle = pld.PLDAccountant(value_discretization_interval=1e-4)
    else:
        oracle = rdp.RdpAccountant()
    return oracle.compose(event).get_epsilon(delta)


PLANS = [
    [GaussianRelease(1.1, 64 / 700, 110)],
    [GaussianRelease(0.8, 0.01, 3000)],
    [GaussianRelease(20.0, 1.0, 10)],
    [GaussianRelease(12.0, 1.0, 1), GaussianRelease(1.6, 1 / 11, 110)],
    [GaussianRelease(3.0, 0.5, 40)],
]


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("releases", PLANS, ids=range(len(PLANS)))
def test_epsilon_matches_independent_accountant(releases, accountant):
    ours = compute_epsilon(releases, DELTA, accountant)
    theirs = oracle_epsilon(releases, DELTA, accountant)
    # Within 2%, and never meaningfully below the oracle (a guarantee must not under-report).
    assert ours == pytest.approx(theirs, rel=0.02)
    assert ours >= theirs * 0.995


def opacus_epsilon(releases, delta, accountant):
    """Opacus's own accountant, as ``opacus.accountants`` computes it."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(make_accountant(accountant, merged(releases)).get_epsilon(delta=delta))


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("releases", PLANS, ids=range(len(PLANS)))
def test_epsilon_is_opacus_own(releases, accountant):
    # The cached RDP vectors (the fractional orders summed at once) and the PRV built from
    # Opacus's parts give Opacus's value: PRV's bit for bit, RDP's to rounding.
    ours = compute_epsilon(releases, DELTA, accountant)
    assert ours == pytest.approx(opacus_epsilon(releases, DELTA, accountant), rel=1e-10, abs=0)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_trajectory_is_each_round_epsilon_and_ends_at_the_plan(accountant):
    prior = [GaussianRelease(5.4, 1.0, 1)]
    rounds = 6
    trajectory = epsilon_trajectory(
        prior, GaussianRelease(1.84375, 0.1, 10), rounds, DELTA, accountant
    )
    assert len(trajectory) == rounds
    assert list(trajectory) == sorted(trajectory) and trajectory[0] < trajectory[-1]
    for r, epsilon in enumerate(trajectory, start=1):
        releases = [*prior, GaussianRelease(1.84375, 0.1, r * 10)]
        # The ledger's value for what it recorded, and Opacus's own (to RDP's rounding).
        assert epsilon == compute_epsilon(releases, DELTA, accountant)
        assert epsilon == pytest.approx(opacus_epsilon(releases, DELTA, accountant), rel=1e-10)
        if r in (1, rounds):  # an upper bound of an independent accountant's
            assert epsilon >= oracle_epsilon(releases, DELTA, accountant) * 0.995


def test_trajectory_of_a_release_the_prior_repeats():
    # The prior and the rounds release the same mechanism: one merged entry per round.
    release = GaussianRelease(2.0, 0.2, 5)
    trajectory = epsilon_trajectory([release], release, 3, DELTA, "prv")
    assert trajectory[-1] == compute_epsilon([GaussianRelease(2.0, 0.2, 20)], DELTA, "prv")
    assert list(trajectory) == sorted(trajectory)


def test_same_plan_is_planned_once():
    prior = [GaussianRelease(12.0, 1.0, 1)]
    first = calibrate_noise(2.0, DELTA, 1 / 7, 70, "prv", prior)
    started = time.process_time()
    again = calibrate_noise(2.0, DELTA, 1 / 7, 70, "prv", tuple(prior))
    assert again == first and time.process_time() - started < 0.01


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_calibrated_noise_meets_target_for_whole_run(accountant):
    prior = [GaussianRelease(12.0, 1.0, 1)]
    noise = calibrate_noise(3.0, DELTA, 1 / 11, 110, accountant, prior)
    spent = compute_epsilon([*prior, GaussianRelease(noise, 1 / 11, 110)], DELTA, accountant)
    assert 3.0 * 0.99 <= spent <= 3.0
    assert oracle_epsilon([*prior, GaussianRelease(noise, 1 / 11, 110)], DELTA, accountant) <= 3.0
    # Less noise would overspend: the plan is tight, not just safe.
    looser = compute_epsilon(
        [*prior, GaussianRelease(noise * 0.97, 1 / 11, 110)], DELTA, accountant
    )
    assert looser > 3.0 * 0.99


def test_more_steps_need_more_noise():
    few = calibrate_noise(1.0, DELTA, 0.1, 50, "prv")
    many = calibrate_noise(1.0, DELTA, 0.1, 500, "prv")
    assert many > few


def test_prior_releases_that_spend_everything_are_refused():
    with pytest.raises(ValueError, match="already spend"):
        calibrate_noise(0.1, DELTA, 0.1, 50, "prv", [GaussianRelease(0.5, 1.0, 5)])


def test_history_round_trips_exactly():
    releases = [GaussianRelease(12.0, 1.0, 1), GaussianRelease(1.61328125, 1 / 11, 110)]
    assert loads_releases(dumps_releases(releases)) == releases
    assert compute_epsilon(loads_releases(dumps_releases(releases)), DELTA, "prv") == (
        compute_epsilon(releases, DELTA, "prv")
    )


def test_no_release_spends_nothing():
    assert compute_epsilon([], DELTA, "prv") == 0.0


@pytest.mark.parametrize(
    "args", [(0.0, 0.1, 1), (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, 0.5, 0), (float("nan"), 0.5, 1)]
)
def test_invalid_release_is_rejected(args):
    with pytest.raises(ValueError):
        GaussianRelease(*args)
