"""The empirical privacy audit: its statistics, and that it catches a site whose DP is broken.

The broken site is broken by real means: a Flower mod rewrites the noise multiplier of the
site's own privacy plan in its node state just before each round's training, so the site trains
without noise while its accountant still reports the planned epsilon.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message
from scipy import stats

from federation.audit import craft_canaries, run_audit
from federation.synth import write_cohort
from federation.wire.spec import load_spec
from privacy.audit import (
    attack_roc,
    epsilon_lower_bound,
    one_run_bound,
    p_value,
    verdict,
)


def test_perfect_guesses_give_the_closed_form_bound():
    """All r guesses right, delta 0: the bound solves q^r = 1 - confidence, q = e^eps/(1+e^eps)."""
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(r, r, 0.0, 2 * r) == pytest.approx(math.log(q / (1 - q)), 1e-6)


def test_p_value_is_the_binomial_tail_plus_the_delta_term():
    """Hand-computed: P[Bin(20, q) >= 17] at eps 1, and the delta term of Steinke et al."""
    q = math.e / (1 + math.e)
    tail = sum(math.comb(20, k) * q**k * (1 - q) ** (20 - k) for k in range(17, 21))
    assert p_value(20, 17, 1.0, 0.0, 100) == pytest.approx(tail, rel=1e-9)
    window = max(
        sum(stats.binom.pmf(17 - j, 20, q) for j in range(1, i + 1)) / i for i in range(1, 18)
    )
    expected = tail + 2 * 100 * 1e-5 * window
    assert p_value(20, 17, 1.0, 1e-5, 100) == pytest.approx(expected, rel=1e-9)


def test_random_scores_prove_nothing():
    rng = np.random.default_rng(0)
    members = rng.random(1000) < 0.5
    bound = one_run_bound({"noise": rng.normal(size=1000)}, members, delta=1e-5)
    roc = attack_roc(rng.normal(size=1000), members)
    assert bound.lower < 0.2
    assert abs(roc.auc - 0.5) < 0.06
    assert verdict(1.0, bound).startswith("consistent")


def test_separable_scores_give_a_bound_and_a_violation():
    rng = np.random.default_rng(1)
    members = rng.random(1000) < 0.5
    bound = one_run_bound({"oracle": members + 0.0}, members, delta=1e-5)
    roc = attack_roc(members + 0.0, members)
    assert roc.auc == 1.0 and roc.tpr_at_1pct_fpr == 1.0 and roc.tpr_at_0_1pct_fpr == 1.0
    assert bound.correct == bound.guesses == 600  # 30% of 1000 guessed in, 30% out
    assert bound.lower > 4.5 and bound.upper == math.inf  # the delta term caps it near 4.9
    assert verdict(3.0, bound).startswith("VIOLATION")
    assert verdict(None, bound).startswith("no DP claim; leakage detected")


@dataclass(frozen=True)
class NoiseOff:
    """A Flower client mod: site ``partition`` trains with (almost) no DP noise while its ledger
    records the plan's noise, as a site whose DP-SGD is broken would."""

    partition: int

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        from federation.client import handlers

        mine = int(context.node_config["partition-id"]) == self.partition
        if not (mine and msg.metadata.message_type == "train"):
            return call_next(msg, context)
        honest = handlers.train_dp

        def noiseless(model, x, y, settings, plan):
            honest(model, x, y, settings, replace(plan, noise_multiplier=1e-6))

        handlers.train_dp = noiseless
        try:
            return call_next(msg, context)
        finally:
            handlers.train_dp = honest


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    files, spec_path = write_cohort(tmp_path_factory.mktemp("audit"), 2, 150, seed=3)
    spec = load_spec(spec_path).with_overrides(
        model={"hidden": (256,), "name": "mlp"},
        training={"rounds": 5, "local_epochs": 5},
        privacy={"target_epsilon": 0.5, "accountant": "rdp"},
    )
    return spec, files


@pytest.mark.slow
@pytest.mark.parametrize("broken", [True, False])
def test_audit_flags_a_site_whose_noise_is_off(tiny_cohort, tmp_path, broken):
    spec, files = tiny_cohort
    site = next(iter(files))
    mods = [NoiseOff(0)] if broken else []
    report = run_audit(spec, files, site, tmp_path / "audit", 200, seed=1, client_mods=mods)
    print(json.dumps({k: report[k] for k in ("attacks", "empirical_epsilon", "verdict")}))
    assert report["claimed_epsilon"] == pytest.approx(0.5, abs=0.01)  # the accountant's claim
    assert json.loads((tmp_path / "audit" / "audit.json").read_text()) == report
    if broken:
        assert report["empirical_epsilon_lower"] > report["claimed_epsilon"]
        assert report["verdict"].startswith("VIOLATION")
        assert report["attacks"]["joint"]["auc"] > 0.75
    else:
        assert report["empirical_epsilon_lower"] <= report["claimed_epsilon"]
        assert report["verdict"].startswith("consistent")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--audit-site", "nowhere"], "--audit-site nowhere: no --site of that name"),
        (["--audit-site", "a", "--no-dp", "--target-epsilon", "1"], "exclude each other"),
        (["--audit-site", "a", "--no-dp", "--epsilon", "1"], "exclude each other"),  # old name
        (
            ["--audit-site", "a", "--target-epsilon", "1", "--epsilon", "2"],
            "--epsilon is the old name of --target-epsilon: give one",
        ),
        (["--audit-site", "a", "--canaries", "5"], "--canaries must be at least 20"),
    ],
)
def test_mia_mistakes_are_one_line_and_exit_2(
    cohort, tmp_path, monkeypatch, capsys, extra, message
):
    from federation.cli import main

    files, spec_path = cohort
    path = next(iter(files.values()))
    argv = ["allfed", "privacy", "mia", "--study", str(spec_path), "--site", f"a={path}"]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path / "audit"), *extra])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and message in err


@pytest.fixture(scope="module")
def tiny_survival_cohort(tmp_path_factory):
    files, spec_path = write_cohort(tmp_path_factory.mktemp("audit-surv"), 2, 150, seed=4,
                                    task="survival")  # fmt: skip
    spec = load_spec(spec_path).with_overrides(
        model={"hidden": (256,), "name": "mlp"},
        training={"rounds": 5, "local_epochs": 5},
        privacy={"target_epsilon": 0.5, "accountant": "rdp"},
    )
    return spec, files


def test_survival_canaries_have_follow_up_within_the_intervals_and_random_events(
    tiny_survival_cohort,
):
    spec, files = tiny_survival_cohort
    frame = pd.read_csv(next(iter(files.values())), dtype=str)
    canaries = craft_canaries(frame, spec, 400, np.random.default_rng(0))
    time = canaries[spec.study.time].astype(int)
    assert time.between(1, max(spec.study.intervals)).all() and time.nunique() > 300
    assert set(canaries[spec.study.event]) == {"0", "1"}
    assert abs(canaries[spec.study.event].astype(int).mean() - 0.5) < 0.1


@pytest.mark.slow
def test_audit_flags_a_survival_site_whose_noise_is_off(tiny_survival_cohort, tmp_path):
    spec, files = tiny_survival_cohort
    site = next(iter(files))
    report = run_audit(
        spec, files, site, tmp_path / "audit", 200, seed=1, client_mods=[NoiseOff(0)]
    )
    print(json.dumps({k: report[k] for k in ("attacks", "empirical_epsilon", "verdict")}))
    assert report["claimed_epsilon"] == pytest.approx(0.5, abs=0.01)
    assert report["empirical_epsilon_lower"] > report["claimed_epsilon"]
    assert report["verdict"].startswith("VIOLATION")
