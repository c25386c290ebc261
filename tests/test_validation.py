"""Server-side update validation and the robust strategies, on real Flower records."""

from __future__ import annotations

import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum
from flwr.supercore.task_identity import TaskIdentity

from federation.errors import SpecError
from federation.server.strategy import build_strategy
from federation.server.validation import (
    check_arrays,
    norm_outliers,
    update_norm,
    validate_updates,
)
from federation.wire import protocol as p
from federation.wire.spec import parse_spec

MINIMAL = """
[study]
label = "y"
[features]
numeric = ["age"]
"""


def record(weight: np.ndarray, bias: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"linear.weight": Array(weight), "linear.bias": Array(bias)})


GLOBAL = record(np.zeros((1, 4), np.float32), np.zeros(1, np.float32))


def honest(seed: int, scale: float = 1.0) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    weight = (np.array([[1.0, -0.5, 0.3, 0.2]]) + 0.05 * rng.normal(size=(1, 4))) * scale
    return record(weight.astype(np.float32), np.array([0.1 * scale], np.float32))


def test_a_well_formed_update_passes():
    assert check_arrays(honest(0), GLOBAL) is None


@pytest.mark.parametrize(
    ("update", "problem"),
    [
        (ArrayRecord({"linear.weight": Array(np.zeros((1, 4), np.float32))}), "missing"),
        (
            ArrayRecord(
                {
                    "linear.weight": Array(np.zeros((1, 4), np.float32)),
                    "linear.bias": Array(np.zeros(1, np.float32)),
                    "extra": Array(np.zeros(1, np.float32)),
                }
            ),
            "unexpected",
        ),
        (
            record(np.zeros((1, 5), np.float32), np.zeros(1, np.float32)),
            r"layer linear.weight is float32\[1, 5\], the model's is float32\[1, 4\]",
        ),
        (record(np.zeros((1, 4), np.float64), np.zeros(1, np.float32)), "float64"),
        (record(np.zeros((1, 4), np.int32), np.zeros(1, np.float32)), "int32"),
        (
            record(np.array([[np.nan, 0, 0, np.nan]], np.float32), np.zeros(1, np.float32)),
            "layer linear.weight has 2 non-finite values",
        ),
        (record(np.zeros((1, 4), np.float32), np.array([np.inf], np.float32)), "non-finite"),
    ],
)
def test_malformed_updates_are_named(update, problem):
    found = check_arrays(update, GLOBAL)
    assert found is not None
    assert re.search(problem, found), found


def test_update_norm_is_the_change_from_the_global_weights():
    start = record(np.ones((1, 4), np.float32), np.ones(1, np.float32))
    moved = record(np.array([[4, 1, 1, 1]], np.float32), np.array([5], np.float32))
    assert update_norm(moved, start) == pytest.approx(5.0)


def test_norm_rule_rejects_only_the_outlier():
    norms = {1: 1.0, 2: 1.3, 3: 0.8, 4: 1000.0}
    rejected = norm_outliers(norms, 10.0)
    assert set(rejected) == {4}
    assert "1e+03 is 1000 times the median of the other sites' (1)" in rejected[4]
    assert set(norm_outliers({1: 1.0, 2: 1000.0}, 10.0)) == {2}  # two sites: still caught
    assert norm_outliers({1: 1.0, 2: 9.0}, 10.0) == {}  # heterogeneous but honest sizes pass
    assert norm_outliers(norms, 0.0) == {}  # 0 turns the rule off
    assert norm_outliers({1: 0.0, 2: 0.0, 3: 5.0}, 10.0) == {}  # nothing to compare with
    assert norm_outliers({1: 5.0}, 10.0) == {}


def test_validate_updates_rejects_bad_ones_and_keeps_the_rest():
    bad_values = record(np.full((1, 4), np.nan, np.float32), np.zeros(1, np.float32))
    scaled = honest(3, scale=-1000.0)
    updates = {11: honest(1), 12: bad_values, 13: honest(2), 14: scaled, 15: honest(4)}
    verdict = validate_updates(updates, GLOBAL, 10.0, {12: "site-b"})
    assert verdict.accepted == [11, 13, 15]
    assert set(verdict.rejected) == {12, 14}
    assert "non-finite" in verdict.rejected[12] and "times the median" in verdict.rejected[14]
    assert 12 not in verdict.norms and verdict.norms[14] > 900


@pytest.fixture
def server_identity():
    """Messages are created by a ServerApp; give this process the identity Flower expects."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def message(arrays: ArrayRecord, node: int, examples: int = 100) -> Message:
    content = RecordDict({p.ARRAYS: arrays, p.METRICS: MetricRecord({p.NUM_EXAMPLES: examples})})
    return Message(content=content, dst_node_id=node, message_type="train")


@pytest.mark.parametrize(
    ("strategy", "kind"),
    [
        ("fedavg", FedAvg),
        ("fedmedian", FedMedian),
        ("fedtrimmedavg", FedTrimmedAvg),
        ("krum", Krum),
    ],
)
def test_robust_strategies_are_flowers_own_and_bound_a_scaled_update(
    strategy, kind, server_identity
):
    text = MINIMAL + f'[training]\nstrategy = "{strategy}"\ntrim-fraction = 0.25\n'
    built = build_strategy(parse_spec(text))
    assert type(built) is kind
    sites = [honest(1), honest(2), honest(3), honest(4, scale=-1000.0)]
    arrays, metrics = built.aggregate_train(1, [message(a, i + 1) for i, a in enumerate(sites)])
    weight = arrays["linear.weight"].numpy()
    distance = np.abs(weight - honest(1)["linear.weight"].numpy()).max()
    if strategy == "fedavg":
        assert distance > 100  # one scaled site takes plain averaging over
    else:
        assert distance < 0.5  # the robust ones stay with the honest majority
    assert metrics[p.NUM_EXAMPLES] > 0


def test_robust_strategy_settings_are_read_and_checked():
    spec = parse_spec(MINIMAL + "[training]\nstrategy = 'krum'\nkrum-malicious = 1\n")
    assert (spec.training.strategy, spec.training.krum_malicious) == ("krum", 1)
    krum = build_strategy(spec)
    assert isinstance(krum, Krum) and krum.num_malicious_nodes == 1
    trimmed = parse_spec(MINIMAL + "[training]\nstrategy = 'fedtrimmedavg'\ntrim-fraction = 0.3")
    assert (trimmed.training.strategy, trimmed.training.trim_fraction) == ("fedtrimmedavg", 0.3)
    trimmed_avg = build_strategy(trimmed)
    assert isinstance(trimmed_avg, FedTrimmedAvg) and trimmed_avg.beta == 0.3
    default = parse_spec(MINIMAL).training
    assert (default.max_update_ratio, default.trim_fraction, default.krum_malicious) == (
        10.0,
        0.2,
        0,
    )
    assert type(build_strategy(parse_spec(MINIMAL))) is FedAvg
    with pytest.raises(
        SpecError, match=r"\[training\] trim-fraction: must be a number in \[0, 0.5\), got 0.5"
    ):
        parse_spec(MINIMAL + "[training]\ntrim-fraction = 0.5\n")
    with pytest.raises(SpecError, match=r"strategy: 'bulyan' is not one of .*'krum'"):
        parse_spec(MINIMAL + "[training]\nstrategy = 'bulyan'\n")
    with pytest.raises(SpecError, match="max-update-ratio: must be at least 0"):
        parse_spec(MINIMAL + "[training]\nmax-update-ratio = -1\n")
    unchecked = parse_spec(MINIMAL + "[training]\nmax-update-ratio = 0\n")  # 0: no check
    assert unchecked.training.max_update_ratio == 0.0
    assert parse_spec(unchecked.to_toml()) == unchecked
