"""Study spec parsing: defaults, round trip, and one clear error per mistake."""

import random

import pytest

from federation.errors import SpecError
from federation.synth import study_toml
from federation.wire.spec import (
    ACCOUNTANTS,
    SCALINGS,
    STRATEGIES,
    FeatureSection,
    ModelSection,
    PrivacySection,
    StudySection,
    StudySpec,
    TrainingSection,
    feature_names,
    federated_columns,
    parse_spec,
)

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
    assert spec.training.strategy == "fedavg" and spec.training.rounds is None  # planned
    planned = spec.training.planned(700)
    assert planned.is_planned and not spec.training.is_planned
    assert (planned.rounds, planned.steps_per_round, planned.batch_size_for(700)) == (10, 10, 70)
    assert spec.privacy.enabled and spec.privacy.accountant == "prv"
    assert spec.privacy.target_epsilon == 3.0 and spec.privacy.delta == 1e-5


def test_synthetic_study_round_trips_through_toml():
    spec = parse_spec(study_toml())
    assert parse_spec(spec.to_toml()) == spec
    assert feature_names(spec)[: len(spec.features.numeric)] == list(spec.features.numeric)
    assert "sex=female" in feature_names(spec)


# What a name or level may hold that TOML must escape or carry as is: quotes, backslashes, the
# control characters (tab is the one a TOML string may hold unescaped), TOML's own syntax, and
# unicode beyond the BMP. (A lone surrogate cannot be written as UTF-8 at all.)
AWKWARD = ["'", '"', "\\", "\t", "\r", "\n", "\x00", "\x1b", "\x7f", "\u2028", "é", "中", "😀"]
AWKWARD += [" ", ".", "=", "#", "[", "]", "{", ",", "'''", '"""', "a", "b", "1"]


def awkward_text(rng: random.Random, taken: set[str]) -> str:
    """A new non-empty string of awkward characters, unlike any in ``taken``."""
    while True:
        text = "".join(rng.choice(AWKWARD) for _ in range(rng.randint(1, 6)))
        if text not in taken:
            taken.add(text)
            return text


def random_spec(rng: random.Random) -> StudySpec:
    """A valid spec whose every name, level and label is awkward text."""
    taken: set[str] = set()
    names = [awkward_text(rng, taken) for _ in range(rng.randint(1, 4))]
    numeric = tuple(names[: rng.randint(0, len(names))]) or (awkward_text(rng, taken),)
    categorical = {
        name: tuple(dict.fromkeys(awkward_text(rng, set()) for _ in range(rng.randint(1, 3))))
        for name in names
        if name not in numeric
    }
    bounds = {c: (-rng.uniform(0, 1e3), rng.uniform(0, 1e3)) for c in numeric if rng.random() < 0.5}
    plausible = {c: (low - 1.5, high * 2.0 + 0.1) for c, (low, high) in bounds.items()}
    extra_groups = [awkward_text(rng, taken) for _ in range(rng.randint(0, 2))]
    groups = tuple(rng.sample(list(categorical), rng.randint(0, len(categorical))) + extra_groups)
    study = StudySection(
        name=awkward_text(rng, set()),
        label=awkward_text(rng, taken),
        groups=groups,
        group_levels={g: ("x", awkward_text(rng, {"x"})) for g in extra_groups},
        consent=awkward_text(rng, taken) if rng.random() < 0.5 else None,
        split=awkward_text(rng, taken) if rng.random() < 0.5 else None,
        test_fraction=rng.uniform(0.05, 0.95),
        seed=rng.randint(-(2**40), 2**40),
    )
    features = FeatureSection(
        numeric=numeric,
        categorical=categorical,
        missing={c: rng.choice(("impute", "drop")) for c in names if rng.random() < 0.5},
        bounds=bounds,
        scaling=rng.choice(SCALINGS),
        na_values=tuple(dict.fromkeys(awkward_text(rng, set()) for _ in range(rng.randint(0, 3)))),
        plausible=plausible,
    )
    training = TrainingSection(
        rounds=rng.randint(1, 50),
        learning_rate=rng.uniform(1e-4, 2.0),
        strategy=rng.choice(STRATEGIES),
        proximal_mu=rng.choice((0.0, rng.uniform(0, 1))),
        trim_fraction=rng.uniform(0, 0.49),
        max_update_ratio=rng.choice((0.0, 10.0, rng.uniform(1, 100))),
    )
    privacy = PrivacySection(
        enabled=rng.random() < 0.8,
        target_epsilon=rng.uniform(0.01, 100),
        delta=rng.choice((1e-5, rng.uniform(1e-12, 0.5))),
        accountant=rng.choice(ACCOUNTANTS),
        evaluation_epsilon=rng.choice((None, rng.uniform(0.01, 100))),
    )
    model = ModelSection(name=rng.choice(("logistic", "mlp")), hidden=(rng.randint(1, 64),))
    return StudySpec(study, features, model, training, privacy)


def test_random_specs_with_awkward_names_round_trip_through_toml():
    """``parse_spec(spec.to_toml()) == spec`` for any valid spec: the sites check the very spec
    the server used, and a resume compares the two."""
    rng = random.Random(20240611)
    for _ in range(300):
        spec = random_spec(rng)
        text = spec.to_toml()
        assert parse_spec(text) == spec, text


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
