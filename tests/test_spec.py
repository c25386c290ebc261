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


def awkward_text(rng: random.Random, taken: set[str], name: bool = True) -> str:
    """A new non-empty string of awkward characters, unlike any in ``taken``; a column
    ``name`` has no whitespace around it (a site strips its header names)."""
    while True:
        text = "".join(rng.choice(AWKWARD) for _ in range(rng.randint(1, 6)))
        if text not in taken and (text == text.strip() or not name):
            taken.add(text)
            return text


def random_spec(rng: random.Random) -> StudySpec:
    """A valid spec whose every name, level and label is awkward text."""
    taken: set[str] = set()
    names = [awkward_text(rng, taken) for _ in range(rng.randint(1, 4))]
    numeric = tuple(names[: rng.randint(0, len(names))]) or (awkward_text(rng, taken),)
    categorical = {
        name: tuple(
            dict.fromkeys(awkward_text(rng, set(), name=False) for _ in range(rng.randint(1, 3)))
        )
        for name in names
        if name not in numeric
    }
    bounds = {c: (-rng.uniform(0, 1e3), rng.uniform(0, 1e3)) for c in numeric if rng.random() < 0.5}
    plausible = {c: (low - 1.5, high * 2.0 + 0.1) for c, (low, high) in bounds.items()}
    extra_groups = [awkward_text(rng, taken) for _ in range(rng.randint(0, 2))]
    groups = tuple(rng.sample(list(categorical), rng.randint(0, len(categorical))) + extra_groups)
    study = StudySection(
        name=awkward_text(rng, set(), name=False),
        label=awkward_text(rng, taken),
        groups=groups,
        group_levels={g: ("x", awkward_text(rng, {"x"}, name=False)) for g in extra_groups},
        consent=awkward_text(rng, taken) if rng.random() < 0.5 else None,
        split=awkward_text(rng, taken) if rng.random() < 0.5 else None,
        test_fraction=rng.uniform(0.05, 0.95),
        seed=rng.randint(0, 2**63 - 1),
    )
    features = FeatureSection(
        numeric=numeric,
        categorical=categorical,
        missing={c: rng.choice(("impute", "drop")) for c in names if rng.random() < 0.5},
        bounds=bounds,
        scaling=rng.choice(SCALINGS),
        na_values=tuple(
            dict.fromkeys(awkward_text(rng, set(), name=False) for _ in range(rng.randint(0, 3)))
        ),
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
        (
            MINIMAL + "[training]\nrounds = -1",
            r"\[training\] rounds: must be an integer in \[1, 10000\], got -1",
        ),
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


@pytest.mark.parametrize(
    ("section", "setting", "message"),
    [
        ("training", "rounds = 10001", "rounds: must be an integer in [1, 10000], got 10001"),
        ("training", "rounds = 0", "rounds: must be an integer in [1, 10000], got 0"),
        ("training", "local-epochs = 5000", "local-epochs: must be an integer in [1, 1000]"),
        ("training", "batch-size = 0", "batch-size: must be an integer in [1, 10000000], got 0"),
        ("training", "batch-size = 1e9", "batch-size: expected an integer, got float"),
        ("training", "steps-per-round = 10_000_000", "steps-per-round: must be an integer in"),
        ("training", "learning-rate = 1e9", "learning-rate: must be a number in (0, 100], got"),
        ("training", "learning-rate = nan", "learning-rate: must be a number in (0, 100], got nan"),
        ("training", "learning-rate = 0", "learning-rate: must be a number in (0, 100], got 0.0"),
        ("training", "proximal-mu = 1e6", "proximal-mu: must be a number in [0, 100]"),
        ("training", "proximal-mu = -0.1", "proximal-mu: must be a number in [0, 100], got -0.1"),
        ("training", "round-timeout = 0.01", "round-timeout: must be a number in [1, 604800]"),
        ("training", "round-timeout = 1e300", "round-timeout: must be a number in [1, 604800]"),
        ("training", "round-timeout = inf", "round-timeout: must be a number in [1, 604800]"),
        ("training", "evaluate-every = 20000", "evaluate-every: must be an integer in [0, 10000]"),
        ("training", "evaluate-every = -1", "evaluate-every: must be an integer in [0, 10000]"),
        ("privacy", "max-grad-norm = 1e6", "max-grad-norm: must be a number in (0, 1000]"),
        ("privacy", "max-grad-norm = 0", "max-grad-norm: must be a number in (0, 1000], got 0.0"),
        ("study", "seed = -1", "seed: must be an integer in [0, 9223372036854775807], got -1"),
        ("study", "seed = 1.5", "seed: expected an integer, got float"),
    ],
)
def test_settings_outside_their_range_are_refused_naming_the_key_and_range(
    section, setting, message
):
    if section == "study":
        text = MINIMAL.replace("[study]", f"[study]\n{setting}")
    else:
        text = MINIMAL + f"[{section}]\n{setting}\n"
    with pytest.raises(SpecError) as error:
        parse_spec(text, source="study.toml")
    assert str(error.value).startswith(f"study.toml: [{section}] {message}"), str(error.value)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("training", "rounds", 10_000),
        ("training", "learning-rate", 100.0),
        ("training", "proximal-mu", 0.0),
        ("training", "round-timeout", 604_800.0),
        ("training", "evaluate-every", 10_000),
        ("privacy", "max-grad-norm", 1_000.0),
    ],
)
def test_the_range_limits_themselves_are_allowed(section, key, value):
    spec = parse_spec(MINIMAL + f"[{section}]\n{key} = {value!r}\n")
    assert getattr(getattr(spec, section), key.replace("-", "_")) == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"rounds": 10**6}, "[training] rounds: must be an integer in [1, 10000], got 1000000"),
        ({"learning_rate": 1e9}, "[training] learning-rate: must be a number in (0, 100], got"),
    ],
)
def test_command_line_overrides_are_held_to_the_same_ranges(override, message):
    with pytest.raises(SpecError) as error:
        parse_spec(MINIMAL).with_overrides(training=override)
    assert str(error.value).startswith(f"command-line overrides: {message}")


@pytest.mark.parametrize(
    ("where", "name", "message"),
    [
        ("label", '"  "', "[study] label: expected a column name, got '  '"),
        ("label", '" outcome"', "[study] label: column name ' outcome' has whitespace around it"),
        ("consent", '"\\t"', "[study] consent: expected a column name, got '\\t'"),
        ("split", '"part "', "[study] split: column name 'part ' has whitespace around it"),
        ("numeric", '["age", " bmi"]', "[features] numeric: column name ' bmi' has whitespace"),
        ("numeric", '["age", "  "]', "[features] numeric: expected a column name, got '  '"),
        ("categorical", '{ "sex " = ["f", "m"] }', "[features] categorical.sex : column name"),
        ("groups", '["site "]', "[study] groups: column name 'site ' has whitespace around it"),
    ],
)
def test_column_names_a_site_cannot_match_are_refused(where, name, message):
    study, features = '[study]\nlabel = "outcome"\n', '[features]\nnumeric = ["age"]\n'
    if where in ("numeric", "categorical"):
        features = "[features]\n" + ("" if where == "numeric" else 'numeric = ["age"]\n')
        features += f"{where} = {name}\n"
    elif where == "label":
        study = f"[study]\nlabel = {name}\n"
    else:
        study += f"{where} = {name}\n"
    with pytest.raises(SpecError) as error:
        parse_spec(study + features, source="study.toml")
    assert str(error.value).startswith(f"study.toml: {message}"), str(error.value)
