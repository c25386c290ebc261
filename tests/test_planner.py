"""The study planner: settings from the sites' public sizes, and a plan that meets the budget."""

import json
import math
import time

import pytest
from typer.testing import CliRunner

from federation.cli import app
from federation.wire.spec import parse_spec
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.planner import (
    GENEROUS_EPSILON,
    MODERATE_EPSILON,
    STRICT_EPSILON,
    default_training,
    plan_study,
    share_noise,
    steps_per_round_for,
    zcdp_budget,
)

DELTA = 1e-5


def test_every_site_takes_the_same_steps_a_round():
    plan = plan_study(3.0, DELTA, "rdp", [30, 199, 172, 85])
    assert plan.steps_per_round == 1 and plan.rounds == 20
    assert {site.steps_per_round for site in plan.sites} == {1}
    assert [site.sample_rate for site in plan.sites] == [1.0] * 4  # 30 rows: no amplification
    large = plan_study(3.0, DELTA, "rdp", [700, 600, 800])
    assert large.steps_per_round == steps_per_round_for([700, 600, 800]) == 9
    assert {site.steps_per_round for site in large.sites} == {9}
    assert [site.batch_size for site in large.sites] == [78, 67, 89]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_each_site_meets_the_target_after_the_standardization(accountant):
    prior = [GaussianRelease(share_noise(0.1, 3.0, DELTA), 1.0, 1)]
    plan = plan_study(3.0, DELTA, accountant, [30, 700], prior)
    for site in plan.sites:
        spent = compute_epsilon(
            [*prior, GaussianRelease(site.noise_multiplier, site.sample_rate, site.steps)],
            DELTA,
            accountant,
        )
        assert spent == pytest.approx(site.epsilon_by_round[-1]) and spent <= 3.0
        assert spent > 2.97  # no budget wasted
        assert list(site.epsilon_by_round) == sorted(site.epsilon_by_round)
        assert len(site.epsilon_by_round) == plan.rounds


def test_small_sites_train_more_rounds_where_the_budget_is_generous():
    assert default_training([80])["rounds"] == 20  # without DP: as at a strict budget
    assert default_training([80], 3.0)["rounds"] == 20
    assert default_training([80], GENEROUS_EPSILON)["rounds"] == 40
    assert default_training([700], 8.0)["rounds"] == 10  # ten steps a round: no more rounds


def test_small_sites_take_a_larger_step_where_the_noise_allows_it():
    def rate(epsilon):
        return default_training([80], epsilon)["learning_rate"]

    assert rate(None) == rate(1.0) == rate(STRICT_EPSILON) == 2.0
    assert rate(3.0) == pytest.approx(2.5)
    assert rate(MODERATE_EPSILON) == rate(4.0) == 3.0
    assert rate(GENEROUS_EPSILON) == 2.0  # twice the rounds instead
    assert default_training([700], 3.0)["learning_rate"] == 1.0  # ten steps a round
    assert plan_study(8.0, 1e-5, "rdp", [80, 200]).rounds == 40
    text = '[study]\nname = "s"\nlabel = "y"\n[features]\nnumeric = ["x"]\n[privacy]\n'
    assert parse_spec(text + "target-epsilon = 8.0\n").planned(80).training.rounds == 40
    assert parse_spec(text + "target-epsilon = 3.0\n").planned(80).training.rounds == 20
    assert parse_spec(text + "enabled = false\n").planned(80).training.rounds == 20


def test_a_survival_study_is_planned_by_the_same_rules():
    """The discrete-time hazard model of Fed-TCGA-BRCA's small sites was measured at the
    binary rule's settings and at others (the planner's docstring): none did better."""
    binary = '[study]\nname = "s"\nlabel = "y"\n'
    survival = '[study]\nname = "s"\ntask = "survival"\ntime = "t"\nevent = "e"\nhorizons = [365]\n'
    rest = '[features]\nnumeric = ["x"]\n[privacy]\n'
    for privacy in ("target-epsilon = 3.0\n", "target-epsilon = 8.0\n", "enabled = false\n"):
        planned = parse_spec(survival + rest + privacy).planned(40).training
        assert planned == parse_spec(binary + rest + privacy).planned(40).training
    at_three = parse_spec(survival + rest + "target-epsilon = 3.0\n").planned(40).training
    assert (at_three.rounds, at_three.steps_per_round) == (20, 1)
    assert at_three.learning_rate == pytest.approx(2.5)


def test_given_settings_are_kept():
    plan = plan_study(3.0, DELTA, "rdp", [700], rounds=5, batch_size=64, learning_rate=0.3)
    assert (plan.rounds, plan.learning_rate, plan.sites[0].batch_size) == (5, 0.3, 64)
    assert plan.steps_per_round is None and plan.sites[0].steps == 5 * 11


def test_a_weak_delta_is_refused():
    with pytest.raises(ValueError, match="delta"):
        plan_study(3.0, 1e-5, "rdp", [30, 200_000])


def test_a_share_of_the_zcdp_budget():
    rho = zcdp_budget(3.0, DELTA)
    assert rho + 2 * math.sqrt(rho * math.log(1 / DELTA)) == pytest.approx(3.0)
    noise = share_noise(0.1, 3.0, DELTA)
    assert 1 / (2 * noise**2) == pytest.approx(0.1 * rho)


def run(*args):
    result = CliRunner().invoke(app, ["privacy", "plan", *args])
    assert result.exit_code == 0, result.output
    return result.output


def study(tmp_path, extra=""):
    path = tmp_path / "study.toml"
    path.write_text(
        '[study]\nlabel = "y"\n[features]\nnumeric = ["a"]\nbounds = { a = [0, 1] }\n' + extra
    )
    return path


def test_cli_shows_the_study_plan(tmp_path):
    path = study(tmp_path, "[training]\nrounds = 12\n[privacy]\ntarget-epsilon = 2.0\n")
    plan = json.loads(run("--study", str(path), "--records", "30", "--records", "700", "--json"))
    assert plan["rounds"] == 12 and plan["target_epsilon"] == 2.0
    assert "rounds" not in plan["chosen_by_planner"] and "batch_size" in plan["chosen_by_planner"]
    assert [s["n_train"] for s in plan["sites"]] == [30, 700]
    assert plan["standardization_noise"] == pytest.approx(share_noise(0.1, 2.0, DELTA))
    text = " ".join(run("--study", str(path), "--records", "30", "--records", "700").split())
    assert "noise multiplier" in text and "per site" in text


def test_cli_plan_is_fast_on_extreme_inputs(tmp_path):
    started = time.perf_counter()
    extreme = ("--records", "1000000", "--batch-size", "1", "--epochs", "10", "--rounds", "100")
    planned = json.loads(run("--target-epsilon", "3", "--delta", "1e-7", *extreme, "--json"))
    assert planned["accountant"] == "rdp" and planned["epsilon"] <= 3.0  # PRV: minutes
    run("--study", str(study(tmp_path)), "--records", "30", "--target-epsilon", "0.05", "--json")
    assert time.perf_counter() - started < 60


def test_cli_study_needs_records(tmp_path, capsys, monkeypatch):
    from federation.cli import main

    monkeypatch.setattr("sys.argv", ["allfed", "privacy", "plan", "--study", str(study(tmp_path))])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--records" in err and len(err.splitlines()) == 1
