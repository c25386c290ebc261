"""End to end: a real Flower simulation of a small federation, and the CLI around it."""

import json

import dp_accounting
import pandas as pd
import pytest
import torch
from cli_helpers import run_allfed
from dp_accounting import pld

from federation.simulation import simulate
from federation.wire.spec import feature_names, load_spec
from models.registry import build_model

pytestmark = pytest.mark.slow


def independent_epsilon(site, delta):
    """Recompute a site's epsilon from summary.json alone, with Google's PLD accountant."""
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                site["sample_rate"], dp_accounting.GaussianDpEvent(site["noise_multiplier"])
            ),
            site["steps"],
        )
    ]
    events += [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(other["noise_multiplier"]), other["steps"]
        )
        for other in site["other_releases"]
    ]
    accountant = pld.PLDAccountant(value_discretization_interval=1e-4)
    return accountant.compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta)


def test_four_sites_one_broken_one_refused_complete_on_the_others(cohort, tmp_path):
    """The acceptance test of robustness: a broken file and a site whose policy cannot be met
    are named with their reasons; the DP run completes on the two others."""
    all_files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(training={"rounds": 4, "strategy": "fedprox"})
    broken = tmp_path / "broken.csv"
    pd.read_csv(next(iter(all_files.values()))).assign(outcome=7).to_csv(broken, index=False)
    *kept, strict = all_files
    files = {name: all_files[name] for name in kept}
    policy = tmp_path / "strict.toml"
    policy.write_text("max-epsilon-per-run = 1.0\n")
    sites = {**files, "broken-site": broken, strict: all_files[strict]}
    out = tmp_path / "run"
    rounds_seen = []

    summary = simulate(
        spec,
        sites,
        out,
        on_round=lambda r, _planned, row: rounds_seen.append(r),
        policies={strict: policy},
    )

    assert summary["status"] == "completed" and summary["rounds"] == 4
    assert rounds_seen == [1, 2, 3, 4]
    assert summary["sites"]["broken-site"]["status"] == "failed"
    assert summary["sites"]["broken-site"]["reason"].startswith("bad-label")
    assert "(outcome)" in summary["sites"]["broken-site"]["reason"]
    assert summary["sites"][strict]["status"] == "refused"
    assert summary["sites"][strict]["reason"] == (
        "epsilon-above-policy: the run's epsilon is above the site's policy (max-epsilon-per-run)"
    )
    target, delta = spec.privacy.target_epsilon, spec.privacy.delta
    for name in files:
        site = summary["sites"][name]
        assert site["status"] == "ok" and site["reason"] is None
        assert 0 < site["epsilon"] <= target
        assert site["steps"] > 0 and 0 < site["sample_rate"] <= 1 and site["noise_multiplier"] > 0
        # Anyone can recompute the epsilon from the summary: within 2%, never under-reported.
        oracle = independent_epsilon(site, delta)
        assert site["epsilon"] == pytest.approx(oracle, rel=0.02)
        assert site["epsilon"] >= oracle * 0.995

    pooled = summary["metrics"]["pooled"]
    assert (
        pooled["auroc"] > 0.65 and pooled["auroc_ci"][0] < pooled["auroc"] < pooled["auroc_ci"][1]
    )
    assert set(summary["metrics"]["per_site"]) == set(files)
    assert set(summary["metrics"]["per_group"]) == set(spec.study.groups)

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]
    epsilons = [json.loads(line)["epsilon"][next(iter(files))] for line in lines]
    assert epsilons == sorted(epsilons)  # cumulative, never reset per round

    card = json.loads((out / "model_card.json").read_text())
    assert card["features"] == feature_names(spec)
    model = build_model(spec.model.name, len(card["features"]))
    model.load_state_dict(torch.load(out / "model.pt"))
    assert (out / "model_card.md").read_text().startswith("# Model card")
    assert "round 4/4" in (out / "run.log").read_text()


def test_cli_simulate_without_dp_with_fedadam_and_site_scaling(cohort, tmp_path):
    files, spec_path = cohort
    spec_path = tmp_path / "study.toml"  # every site scales by its own statistics
    spec_path.write_text(
        cohort[1].read_text().replace("[features]", '[features]\nscaling = "site"')
    )
    args = ["simulate", "--study", str(spec_path), "--out", str(tmp_path / "run")]
    for name, path in list(files.items())[:2]:
        args += ["--site", f"{name}={path}"]
    result = run_allfed(*args, "--rounds", "2", "--no-dp", "--strategy", "fedadam", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads(result.stdout) == summary  # --json: the summary on stdout, nothing else
    assert summary["privacy"]["enabled"] is False and summary["strategy"] == "fedadam"
    assert all(site["epsilon"] is None for site in summary["sites"].values())
    # FedAdam aggregates in float64; round 2's float32 updates must still pass validation.
    assert all(not site["rejected_updates"] for site in summary["sites"].values())
    assert summary["metrics"]["pooled"]["auroc"] > 0.6
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert "| age | each site's | each site's | [18.0, 90.0] | each site's" in card
