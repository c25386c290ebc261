"""Study spec parsing: defaults, round trip, and one clear error per mistake."""

import pytest

from federation.errors import SpecError
from federation.spec import feature_names, federated_columns, parse_spec
from federation.synth import study_toml

MINIMAL = """
[study]
label = "outcome"
[features]
numeric = ["age"]
"""


def test_minimal_spec_gets_sensible_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.study.task == "binary" and spec.study.test_fraction == 0.3
    assert spec.model.name == "logistic"
    assert spec.training.strategy == "fedavg" and spec.training.rounds >= 1
    assert spec.privacy.enabled and spec.privacy.accountant == "prv"
    assert spec.privacy.target_epsilon == 3.0 and spec.privacy.delta == 1e-5


def test_synthetic_study_round_trips_through_toml():
    spec = parse_spec(study_toml())
    assert parse_spec(spec.to_toml()) == spec
    assert feature_names(spec)[: len(spec.features.numeric)] == list(spec.features.numeric)
    assert "sex=female" in feature_names(spec)


def test_overrides_are_validated():
    spec = parse_spec(MINIMAL).with_overrides(training={"rounds": 4}, privacy={"enabled": False})
    assert spec.training.rounds == 4 and not spec.privacy.enabled
    with pytest.raises(SpecError, match="rounds"):
        parse_spec(MINIMAL).with_overrides(training={"rounds": 0})


def test_pooled_scaling_needs_bounds_under_dp():
    spec = parse_spec(MINIMAL)
    assert federated_columns(spec) == []
    assert federated_columns(spec.with_overrides(privacy={"enabled": False})) == [0]
    bounded = parse_spec(
        MINIMAL.replace('numeric = ["age"]', 'numeric = ["age"]\nbounds = { age = [18, 90] }')
    )
    assert federated_columns(bounded) == [0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[study]\nlabel = 1\n[features]\nnumeric = ['a']", r"\[study\] label: expected a string"),
        ("[features]\nnumeric = ['a']", r"missing section \[study\]"),
        ("[study]\n[features]\nnumeric = ['a']", r"\[study\] label: required"),
        ("[study]\nlabel='y'\n[features]\n", "declares no numeric or categorical"),
        (MINIMAL + "[model]\nname = 'forest'", r"\[model\] name: 'forest' is not one of"),
        (MINIMAL + "[training]\nstrategy = 'fedsgd'", r"\[training\] strategy"),
        (MINIMAL + "[training]\nrounds = -1", r"\[training\] rounds: must be positive"),
        (MINIMAL + "[training]\nrounds = true", r"rounds: expected an integer, got a boolean"),
        (MINIMAL + "[privacy]\naccountant = 'gdp'", r"\[privacy\] accountant"),
        (MINIMAL + "[privacy]\ndelta = 1.5", r"\[privacy\] delta"),
        (MINIMAL + "[privacy]\ntarget-epsilon = 0", r"target-epsilon: must be positive"),
        (MINIMAL + "[privacy]\nepsilon = 3", r"\[privacy\] epsilon: unknown key"),
        (MINIMAL + "[extra]\nx = 1", r"unknown section \[extra\]"),
        (MINIMAL.replace('"age"]', '"age", "age"]'), "lists a column twice"),
        (MINIMAL + "missing = { bmi = 'impute' }", r"missing.bmi: not a declared feature"),
        (MINIMAL + "missing = { age = 'mean' }", r"missing.age: expected \"impute\" or \"drop\""),
        (MINIMAL + "bounds = { age = [90, 18] }", r"bounds.age: expected \[LOW, HIGH\]"),
        (MINIMAL + "categorical = { sex = [] }", "non-empty list of allowed levels"),
        (
            MINIMAL.replace('["age"]', '["outcome"]'),
            "label column 'outcome' cannot also be a feature",
        ),
        ("[study\nlabel=", "not valid TOML"),
        (MINIMAL.replace("[study]", "[study]\ntest-fraction = 1.0"), "test-fraction"),
    ],
)
def test_each_mistake_gets_one_clear_line(text, message):
    with pytest.raises(SpecError, match=message) as error:
        parse_spec(text, source="study.toml")
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("study.toml")
