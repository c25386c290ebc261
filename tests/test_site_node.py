"""What actually leaves a site on an honest run: the real ClientApp answering real Flower
messages in-process, with the node config of a deployment."""

import re

import numpy as np
import pandas as pd
import pytest
from wire import (
    evaluate,
    evaluate_ranks,
    node_context,
    numbers,
    reason_of,
    setup,
    state_of,
    train,
)

from federation.wire import protocol as p
from federation.wire.evaluation import N_BINS, histogram_keys, layout
from federation.wire.spec import federated_columns, load_spec
from privacy.accounting import GaussianRelease, compute_epsilon
from privacy.ledger import Ledger
from privacy.refusal import is_public_reason


@pytest.fixture()
def honest(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path).with_overrides(
        training={"rounds": 3}, privacy={"accountant": "rdp"}
    )
    data = next(iter(files.values()))
    ledger = tmp_path / "ledger.sqlite"
    return spec, data, ledger, node_context(data, spec, ledger=ledger)


def allowed(kind: str, record: str, key: str) -> bool:
    return any(re.fullmatch(pattern, key) for pattern in p.REPLY_KEYS[kind][record])


def test_an_honest_run_releases_only_whitelisted_dp_content(honest):
    spec, _, ledger, context = honest
    reply = setup(context)
    assert state_of(reply) == p.OK and set(reply) == {p.STATUS, p.METRICS}
    metrics = reply[p.METRICS]
    assert set(metrics) == {p.N_TRAIN, p.SUM, p.SUM_SQUARES, p.COUNT, p.STANDARDIZATION_NOISE}
    assert len(metrics[p.SUM]) == len(federated_columns(spec))
    # The sums are noisy: no count of present values is a whole number.
    assert not any(float(c).is_integer() for c in metrics[p.COUNT])

    epsilons = []
    for server_round in range(1, spec.training.rounds + 1):
        reply = train(context, spec, server_round)
        assert set(reply) == {p.ARRAYS, p.METRICS}
        assert set(reply[p.METRICS]) == set(p.TRAIN_METRICS)
        epsilons.append(reply[p.METRICS][p.EPSILON])
    last = reply[p.METRICS]
    assert epsilons == sorted(epsilons) and 0.95 * 3.0 <= epsilons[-1] <= 3.0
    releases = [
        GaussianRelease(metrics[p.STANDARDIZATION_NOISE], 1.0, 1),
        GaussianRelease(last[p.NOISE_MULTIPLIER], last[p.SAMPLE_RATE], last[p.STEPS]),
    ]
    assert last[p.EPSILON] == pytest.approx(compute_epsilon(releases, 1e-5, "rdp"))

    first = evaluate(context, spec)
    assert set(first) == {p.METRICS}
    keys = set(first[p.METRICS]) - {p.EPSILON, p.NOISE_MULTIPLIER}
    assert keys == set(histogram_keys(layout(spec).cells))
    for key, value in first[p.METRICS].items():
        assert allowed("evaluate", p.METRICS, key), key
        if key.endswith(("hist_pos", "hist_neg")):
            assert len(value) == N_BINS
    second = evaluate_ranks(context, spec, first)
    assert set(second) == {p.METRICS}
    assert all(allowed("ranks", p.METRICS, key) for key in second[p.METRICS])
    assert second[p.METRICS][p.EPSILON] <= spec.privacy.evaluation_budget

    # The ledger holds every release, train and test partitions apart, and both fit the budget.
    book = Ledger(ledger)
    partitions = {(r["mechanism"], r["partition"]) for r in book.releases()}
    assert partitions == {
        ("gaussian-sums", "train"),
        ("dp-sgd", "train"),
        ("evaluation-histograms", "test"),
        ("evaluation-ranks", "test"),
    }
    spent = book.lifetime_epsilons(1e-5, "rdp")
    assert spent["train"] == pytest.approx(epsilons[-1], rel=1e-6)
    assert spent["test"] == pytest.approx(second[p.METRICS][p.EPSILON], rel=1e-6)
    assert book.lifetime_epsilon(1e-5, "rdp") == max(spent.values())
    kinds = [m["kind"] for m in book.messages()]
    assert kinds == ["setup", "train", "train", "train", "evaluate", "ranks"]


def test_a_repeated_setup_repeats_the_first_reply_and_plans_nothing(honest):
    _, _, ledger, context = honest
    first = setup(context)
    again = setup(context)
    assert dict(again[p.METRICS]) == dict(first[p.METRICS])
    assert len(Ledger(ledger).releases()) == 1  # the sums, once


def test_a_bad_file_fails_with_a_reason_that_names_only_the_column(cohort, tmp_path):
    files, spec_path = cohort
    spec = load_spec(spec_path)
    frame = pd.read_csv(next(iter(files.values())))
    frame.loc[frame.index[:7], "smoking"] = "sometimes"
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    reply = setup(node_context(bad, spec, ledger=tmp_path / "l.sqlite"))
    assert set(reply) == {p.STATUS} and state_of(reply) == p.FAILED
    reason = reason_of(reply)
    assert is_public_reason(reason) and reason.startswith("undeclared-level")
    assert "(smoking)" in reason and not re.search(r"\d", reason) and str(bad) not in reason
    # The detail stays at the site, in its ledger's audit trail.
    detail = Ledger(tmp_path / "l.sqlite").messages()[-1]["detail"]
    assert "7 values" in detail and "sometimes" not in detail


def test_training_without_dp_needs_a_policy_that_allows_it(honest, tmp_path):
    spec, data, _, _ = honest
    plain = spec.with_overrides(privacy={"enabled": False})
    refused = setup(node_context(data, plain, ledger=tmp_path / "a.sqlite"))
    assert state_of(refused) == p.REFUSED and reason_of(refused).startswith("dp-required")
    policy = tmp_path / "policy.toml"
    policy.write_text("require-dp = false\n")
    context = node_context(data, plain, policy=policy, ledger=tmp_path / "b.sqlite")
    assert state_of(setup(context)) == p.OK
    reply = train(context, plain)
    assert set(reply[p.METRICS]) == {p.NUM_EXAMPLES}
    weights = reply[p.ARRAYS].to_torch_state_dict()
    assert not np.allclose(weights["0.weight"].numpy(), 0)


def test_a_delta_too_weak_for_the_site_is_refused_without_its_size(honest, tmp_path):
    spec, data, _, _ = honest
    weak = spec.with_overrides(privacy={"delta": 0.01})
    reply = setup(node_context(data, weak, ledger=tmp_path / "l.sqlite"))
    assert state_of(reply) == p.REFUSED
    assert reason_of(reply).startswith("delta-too-weak") and not re.search(r"\d", reason_of(reply))


def test_a_budget_no_noise_meets_is_refused_with_a_fixed_reason(honest, tmp_path):
    """RDP's orders cannot reach epsilon 0.01: the site says its plan is infeasible, and its
    own log keeps the detail."""
    spec, data, _, _ = honest
    tiny = spec.with_overrides(privacy={"target_epsilon": 0.01, "accountant": "rdp"})
    reply = setup(node_context(data, tiny, ledger=tmp_path / "l.sqlite"))
    assert state_of(reply) == p.REFUSED
    assert reason_of(reply) == (
        "plan-infeasible: the study's privacy budget cannot be met by its plan at the site "
        "(target-epsilon)"
    )


def test_released_values_carry_no_participant_value(honest, tmp_path):
    """A planted BMI never appears in anything the node sends."""
    spec, data, _, _ = honest
    frame = pd.read_csv(data)
    sentinel = 47.654321
    frame.loc[5, "bmi"] = sentinel
    planted = tmp_path / "planted.csv"
    frame.to_csv(planted, index=False)
    context = node_context(planted, spec, ledger=tmp_path / "planted.sqlite")
    replies = [setup(context), train(context, spec)]
    replies.append(evaluate(context, spec))
    replies.append(evaluate_ranks(context, spec, replies[-1]))
    for reply in replies:
        for record in reply.values():
            for value in record.values() if not hasattr(record, "to_torch_state_dict") else []:
                assert not np.isclose(list(numbers(value)), sentinel, atol=1e-6).any()
