"""Sites with the same sampling rate share their DP plan's work within a process (the noise
calibration is remembered by its public inputs, ``accounting._calibrated``; compositions by their
releases, ``accounting.EPSILONS``): a plan worked out after another site's is the plan the site
works out alone, in a fresh process."""

from __future__ import annotations

import pytest

from federation.client.plan import site_plan
from federation.synth import study_toml
from federation.wire.spec import parse_spec
from privacy import accounting


def _fresh_caches() -> None:
    accounting._calibrated.cache_clear()
    accounting._rdp_of_step.cache_clear()
    accounting.EPSILONS.clear()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.setattr(accounting, "EPSILONS", {})
    _fresh_caches()
    yield
    _fresh_caches()


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_a_plan_after_another_sites_equals_the_plan_alone(accountant):
    spec = parse_spec(study_toml(rounds=5)).with_overrides(
        privacy={"accountant": accountant}, training={"steps_per_round": 4}
    )
    sizes = (700, 760, 843)  # four batches a round each: one sampling rate, 1/4
    alone = {}
    for n in sizes:
        _fresh_caches()
        alone[n] = site_plan(spec.planned(n), n, with_sums=True)
    _fresh_caches()
    shared = {n: site_plan(spec.planned(n), n, with_sums=True) for n in sizes}
    assert accounting._calibrated.cache_info().hits >= len(sizes) - 1  # the work was shared
    assert shared == alone
    assert len({plan.dp.sample_rate for plan in shared.values()}) == 1
