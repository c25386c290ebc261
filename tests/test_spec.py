"""Study spec parsing: defaults, round trip, and one clear error per mistake."""

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from federation.deploy.runs import run_config
from federation.errors import SpecError
from federation.synth import study_toml
from federation.wire.spec import (
    ACCOUNTANTS,
    MISSING_RULES,
    SCALINGS,
    STRATEGIES,
    TASKS,
    FeatureSection,
    ModelSection,
    PrivacySection,
    StudySection,
    StudySpec,
    TrainingSection,
    feature_names,
    federated_columns,
    parse_spec,
    spec_from_run_config,
)
from models import MODEL_NAMES

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
    assert "sex=male" in feature_names(spec) and "sex=female" not in feature_names(spec)


# What a name or level may hold that TOML must escape or carry as is: quotes, backslashes, the
# control characters (tab is the one a TOML string may hold unescaped), TOML's own syntax, and
# unicode beyond the BMP; and any other character UTF-8 can write (a lone surrogate it cannot).
AWKWARD = st.sampled_from(list("'\"\\\t\r\n\x00\x1b\x7f\u2028é中😀 .=#[]{},ab1")) | st.characters(
    codec="utf-8"
)
TEXT = st.text(AWKWARD, min_size=1, max_size=6)
NAME = TEXT.filter(lambda name: name == name.strip())  # a site strips its header's names
NUMBER = st.floats(-1e6, 1e6)


def _lists(draw, element, n: int, **kwargs) -> list:
    return draw(st.lists(element, min_size=n, max_size=n, **kwargs))


@st.composite
def specs(draw) -> StudySpec:
    """A valid spec whose every name, level and label is awkward text (drawn in few steps:
    generating the examples, not checking them, is what takes the time)."""
    task = draw(st.sampled_from(TASKS))
    names = draw(st.lists(NAME, min_size=5, max_size=10, unique=True))
    (time, event, consent, split), names = names[:4], names[4:]
    features, others = _split(draw, names, low=1)
    numeric, categorical = _split(draw, features)
    levels = _lists(draw, st.lists(TEXT, min_size=2, max_size=3, unique=True), len(categorical))
    bounded = _split(draw, numeric)[0]
    pairs = _lists(draw, st.tuples(NUMBER, st.floats(1e-3, 1e6)), len(bounded))
    bounds = {c: (low, low + width) for c, (low, width) in zip(bounded, pairs, strict=True)}
    plausible = {c: (low - 1.5, high + abs(high) + 1.5) for c, (low, high) in bounds.items()}
    group_features, extra_groups = _split(draw, categorical)[0], _split(draw, others)[0]
    group_levels = _lists(
        draw, st.lists(TEXT, min_size=1, max_size=2, unique=True), len(extra_groups)
    )
    study = {
        "name": draw(TEXT),
        "task": task,
        "groups": (*extra_groups, *group_features),
        "group_levels": dict(zip(extra_groups, map(tuple, group_levels), strict=True)),
        "consent": draw(st.sampled_from((None, consent))),
        "split": draw(st.sampled_from((None, split))),
        "test_fraction": draw(st.floats(0.01, 0.99)),
        "seed": draw(st.integers(0, 2**63 - 1)),
    }
    if task == "binary":
        study["label"] = time
    else:
        days = sorted(draw(st.lists(st.floats(0.5, 1e5), min_size=1, max_size=4, unique=True)))
        study |= {"time": time, "event": event, "intervals": tuple(days)}
        study["horizons"] = tuple(days[draw(st.integers(0, len(days) - 1)) :])
    missing = _split(draw, features)[0]
    training = {
        "rounds": draw(st.none() | st.integers(1, 10_000)),
        "learning_rate": draw(st.none() | st.floats(1e-6, 100.0)),
        "strategy": draw(st.sampled_from(STRATEGIES)),
        "proximal_mu": draw(st.floats(0.0, 100.0)),
        "trim_fraction": draw(st.floats(0.0, 0.49)),
        "round_timeout": draw(st.floats(1.0, 604_800.0)),
    }
    if batches := draw(st.sampled_from(("batch_size", "steps_per_round", None))):
        training[batches] = draw(st.integers(1, 1_000_000))
    privacy = {
        "enabled": draw(st.booleans()),
        "target_epsilon": draw(st.floats(0.01, 100.0)),
        "delta": draw(st.floats(1e-12, 0.5)),
        "accountant": draw(st.sampled_from(ACCOUNTANTS)),
        "evaluation_epsilon": draw(st.none() | st.floats(0.01, 100.0)),
    }
    return StudySpec(
        study=StudySection(**study),
        features=FeatureSection(
            numeric=tuple(numeric),
            categorical=dict(zip(categorical, map(tuple, levels), strict=True)),
            missing=dict(
                zip(
                    missing, _lists(draw, st.sampled_from(MISSING_RULES), len(missing)), strict=True
                )
            ),
            bounds=bounds,
            scaling=draw(st.sampled_from(SCALINGS)),
            na_values=tuple(draw(st.lists(TEXT, max_size=2, unique=True))),
            plausible=plausible,
        ),
        model=ModelSection(
            name=draw(st.sampled_from(MODEL_NAMES)),
            hidden=tuple(draw(st.lists(st.integers(1, 512), min_size=1, max_size=3))),
        ),
        training=TrainingSection(**training),
        privacy=PrivacySection(**privacy),
    )


def _split(draw, items: list, low: int = 0) -> tuple[list, list]:
    """``items`` cut in two at a drawn place (the first part at least ``low`` long)."""
    at = draw(st.integers(low, len(items)))
    return items[:at], items[at:]


@settings(max_examples=60, deadline=None)
@given(spec=specs(), out=TEXT)
def test_any_valid_spec_round_trips_through_its_toml_and_the_run_config(
    spec, out, tmp_path_factory
):
    """``parse_spec(spec.to_toml()) == spec`` for any valid spec, and through the run config
    ``allfed run launch`` writes and ``flwr run`` reads: the sites check the very spec the server
    used, and a resume compares the two."""
    text = spec.to_toml()
    assert parse_spec(text) == spec, text
    study = tmp_path_factory.getbasetemp() / "study.toml"
    study.write_text(text, encoding="utf-8")
    config_file = run_config(study, Path(out))
    try:
        config = parse_config_args([str(config_file)])  # Flower's own reader
    finally:
        config_file.unlink()
    assert config["out"] == str(Path(out))
    assert spec_from_run_config(config) == spec


def test_a_spec_cannot_be_changed_in_place():
    """Many rounds and sites share one spec object: a change is a new, validated spec."""
    spec = parse_spec(MINIMAL)
    with pytest.raises(ValidationError, match="frozen"):
        spec.training.rounds = 3
    with pytest.raises(ValidationError, match="frozen"):
        spec.privacy = spec.privacy
    assert spec.training.rounds is None


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
        (MINIMAL + "[privacy]\ntarget_epsilon = 3", r"\[privacy\] target_epsilon: unknown key"),
        (
            MINIMAL + "[training]\nrounds = '5'",
            r"\[training\] rounds: expected an integer, got str",
        ),
        (MINIMAL + "[model]\nhidden = [16, 0]", r"\[model\] hidden: expected a non-empty list"),
        ("model = 3\n" + MINIMAL, r"^study.toml: \[model\] must be a table"),
        (MINIMAL + "[extra]\nx = 1", r"unknown section \[extra\]"),
        (MINIMAL.replace('"age"]', '"age", "age"]'), "lists a column twice"),
        (MINIMAL + "missing = { bmi = 'impute' }", r"missing.bmi: not a declared feature"),
        (MINIMAL + "missing = { age = 'mean' }", r"missing.age: expected \"impute\" or \"drop\""),
        (MINIMAL + "bounds = { age = [90, 18] }", r"bounds.age: expected \[LOW, HIGH\]"),
        (MINIMAL + "categorical = { sex = [] }", "non-empty list of allowed levels"),
        (MINIMAL + "categorical = { sex = ['f'] }", r"categorical.sex: declares one level"),
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
