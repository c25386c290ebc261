"""The study spec: parsed and validated once into a typed object the rest of the code trusts.

A spec is a TOML file written by the central team. It travels to every site inside the run
config as TOML text (``StudySpec.to_toml``), so the site checks the very spec the server used.

Each section is a frozen pydantic model: its fields declare the keys, types, defaults and
ranges, and its validators the rules between keys; the rules between sections are
``StudySpec``'s. ``parse_spec`` turns pydantic's first error into one line that names the key.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import tomli_w
from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from federation.errors import SpecError
from federation.wire.cohort import Cohort, check_cohort_columns, parse_cohort
from federation.wire.encoding import mean_input_variance
from federation.wire.protocol import RUN_STUDY, RUN_STUDY_FILE
from models import MODEL_NAMES
from privacy.limits import epsilon_range_error

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
ACCOUNTANTS = ("prv", "rdp")
MISSING_RULES = ("impute", "drop")
SCALINGS = ("federated", "site")
TASKS = ("binary", "survival")


def _problem(message: str, *key: str) -> PydanticCustomError:
    """A broken rule, said as the user should read it; ``key`` is where, below the model that
    raises it (``parse_spec`` prefixes the section)."""
    return PydanticCustomError("spec", "{problem}", {"problem": message, "key": key})


def _invalid_as(message: str) -> WrapValidator:
    """Any error inside the value becomes ``message``: a list's rule, said once for the list."""

    def wrap(value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _problem(message) from None

    return WrapValidator(wrap)


def _distinct(message: str) -> AfterValidator:
    def check(values: tuple) -> tuple:
        if len(set(values)) != len(values):
            raise _problem(message)
        return values

    return AfterValidator(check)


def _column_name_problem(name: str) -> str | None:
    """Why ``name`` can name no column of a site's file: a site reads its header names with
    the surrounding whitespace stripped, so an empty name, or one with whitespace around it,
    never matches and would fail at every site, in the run."""
    if not name.strip():
        return f"expected a column name, got {'an empty string' if not name else repr(name)}"
    if name != name.strip():
        return f"column name {name!r} has whitespace around it; write {name.strip()!r}"
    return None


def _column(name: str) -> str:
    if problem := _column_name_problem(name):
        raise _problem(problem)
    return name


def _levels(levels: tuple[str, ...]) -> tuple[str, ...]:
    if "" in levels:
        raise _problem("lists an empty level (an empty cell is a missing value)")
    if len(set(levels)) != len(levels):
        raise _problem("lists a level twice")
    return levels


def _low_high(pair: tuple[float, float]) -> tuple[float, float]:
    low, high = pair
    if low >= high:
        raise _problem("expected [LOW, HIGH] with LOW < HIGH")
    if not math.isfinite(high - low):
        raise _problem("HIGH - LOW is too large to be a finite number")
    return pair


_DAYS = "expected a non-empty, increasing list of positive numbers of days"


def _increasing(days: tuple[float, ...]) -> tuple[float, ...]:
    if any(b <= a for a, b in pairwise(days)):
        raise _problem(_DAYS)
    return days


def _missing_rule(rule: Any) -> Any:
    if rule not in MISSING_RULES:
        raise _problem(f'expected "impute" or "drop", got {rule!r}')
    return rule


# A column name as a site can match it; distinct names.
Column = Annotated[StrictStr, AfterValidator(_column)]
Columns = Annotated[tuple[Column, ...], _distinct("lists a column twice")]
# A categorical column's (or group column's) levels, read as text: a site compares them with
# the text of its cells.
Levels = Annotated[
    tuple[Annotated[StrictStr | StrictInt, AfterValidator(str)], ...],
    Field(min_length=1),
    _invalid_as("expected a non-empty list of allowed levels"),
    AfterValidator(_levels),
]
LowHigh = Annotated[
    tuple[StrictFloat, StrictFloat],
    _invalid_as("expected [LOW, HIGH] with LOW < HIGH"),
    AfterValidator(_low_high),
]
Days = Annotated[
    tuple[Annotated[StrictFloat, Field(gt=0)], ...],
    Field(min_length=1),
    _invalid_as(_DAYS),
    AfterValidator(_increasing),
]
MissingRule = Annotated[Literal[MISSING_RULES], BeforeValidator(_missing_rule)]  # type: ignore[valid-type]
Text = Annotated[StrictStr, Field(min_length=1)]


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Section(BaseModel):
    """A spec table: its keys are the fields' names in kebab case (``local-epochs``); a key it
    does not declare is an error. NaN and infinity are never a setting."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=_kebab,
        validate_by_alias=True,
        validate_by_name=True,  # in code; a file is read by alias only (``parse_spec``)
        allow_inf_nan=False,
    )


def _named(name: str) -> str:
    return name or "study"


class StudySection(_Section):
    """The study's outcome: ``label`` (0/1) for a binary task; ``time`` (days) and ``event``
    (0/1) for a survival task, with the ``horizons`` (days) its risks are read at and the
    ``intervals`` (cut points in days, the horizons among them; default the horizons) of its
    discrete-time hazard model, fixed here before any data is seen. The survival keys are None
    for a binary study and left out of its TOML."""

    name: Annotated[StrictStr, AfterValidator(_named)] = "study"
    task: Literal[TASKS] = "binary"  # type: ignore[valid-type]
    label: Column | None = None
    groups: Columns = ()
    # Levels of group columns that are not categorical features; a DP table of a group column
    # needs its cells fixed before any data is seen (``allfed analyze``).
    group_levels: dict[Column, Levels] = Field(default_factory=dict)
    # A consent column left empty would silently use every record: a name is checked as one.
    consent: Column | None = None
    split: Column | None = None
    test_fraction: StrictFloat = Field(0.3, gt=0, lt=1)
    # An MLP's initial weights; seeds count from 0 (numpy refuses a negative one).
    seed: StrictInt = Field(0, ge=0, le=2**63 - 1)
    time: Column | None = None
    event: Column | None = None
    horizons: Days | None = None
    intervals: Days | None = None

    @model_validator(mode="before")
    @classmethod
    def _intervals_default_to_the_horizons(cls, data: Any) -> Any:
        if isinstance(data, dict) and "intervals" not in data and "horizons" in data:
            return {**data, "intervals": data["horizons"]}
        return data

    @model_validator(mode="after")
    def _outcome(self) -> StudySection:
        if self.task == "binary":
            for key in ("time", "event", "horizons", "intervals"):
                if getattr(self, key) is not None:
                    raise _problem('applies to task = "survival" only', key)
            if self.label is None:
                raise _problem("required", "label")
            return self
        if self.label is not None:
            raise _problem(
                'a survival study has no label: its outcome is the "time" and "event" columns',
                "label",
            )
        for key in ("time", "event", "horizons"):
            if getattr(self, key) is None:
                raise _problem("required", key)
        if missing := [h for h in self.horizons if h not in self.intervals]:
            raise _problem(
                f"must include every horizon as a cut point (missing {missing[0]:g}): a "
                "horizon's risk is read at the end of an interval",
                "intervals",
            )
        if self.time == self.event:
            raise _problem(f"time and event name the same column {self.time!r}", "event")
        for role in ("consent", "split"):
            if (column := getattr(self, role)) in (self.time, self.event):
                raise _problem(f"the {role} column {column!r} cannot also be time or event", role)
        return self

    @property
    def outcome(self) -> str:
        """The outcome column: the label, or a survival study's event."""
        return self.event if self.task == "survival" else self.label

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """Every column that holds the outcome (none of them may be a feature)."""
        return (self.time, self.event) if self.task == "survival" else (self.label,)


class FeatureSection(_Section):
    """The model's input columns, how a site fills or drops their missing values, and the
    bounds its statistics are clipped to."""

    numeric: Columns = ()
    categorical: dict[Column, Levels] = Field(default_factory=dict)
    missing: dict[str, MissingRule] = Field(default_factory=dict)
    bounds: dict[str, LowHigh] = Field(default_factory=dict)
    scaling: Literal[SCALINGS] = "federated"  # type: ignore[valid-type]
    na_values: Annotated[tuple[Text, ...], _invalid_as("expected a list of non-empty strings")] = ()
    # Values outside a column's plausible range are errors (a unit or entry mistake, not a
    # patient); between it and the bounds they are clipped with a warning.
    plausible: dict[str, LowHigh] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_role_each(self) -> FeatureSection:
        """A column is numeric or categorical, and the rules name declared columns."""
        if not self.columns:
            raise _problem("declares no numeric or categorical column")
        for column, levels in self.categorical.items():
            if column in self.numeric:
                raise _problem(
                    f"{column!r} is also numeric; a feature has one kind", "categorical", column
                )
            if len(levels) < 2:
                raise _problem(
                    "declares one level, which tells records nothing apart; declare every "
                    "level it takes (the first is the model's reference)",
                    "categorical",
                    column,
                )
        for table in ("missing", "bounds", "plausible"):
            for column in getattr(self, table):
                if column not in self.columns:
                    raise _problem("not a declared feature", table, column)
                if table != "missing" and column not in self.numeric:
                    raise _problem(f"{table} apply to numeric features", table, column)
        for column, (low, high) in self.plausible.items():
            if column in self.bounds:
                bound_low, bound_high = self.bounds[column]
                if low > bound_low or high < bound_high:
                    raise _problem(
                        f"must contain its bounds [{bound_low:g}, {bound_high:g}]",
                        "plausible",
                        column,
                    )
        return self

    @property
    def columns(self) -> tuple[str, ...]:
        """Every feature column, numeric first, in the spec's order."""
        return self.numeric + tuple(self.categorical)

    def plausible_range(self, column: str) -> tuple[float, float] | None:
        """The declared plausible range, else the bounds widened by their width on each side
        (``None`` for a column with neither: only non-finite values are refused)."""
        if column in self.plausible:
            return self.plausible[column]
        if column in self.bounds:
            low, high = self.bounds[column]
            return low - (high - low), high + (high - low)
        return None


class ModelSection(_Section):
    """The risk model (``models.registry``) and an MLP's hidden layer sizes."""

    name: Literal[MODEL_NAMES] = "logistic"  # type: ignore[valid-type]
    hidden: Annotated[
        tuple[Annotated[StrictInt, Field(gt=0)], ...],
        Field(min_length=1),
        _invalid_as("expected a non-empty list of positive layer sizes"),
    ] = (32,)


# The ranges' upper limits lie far past any real study, so a value past one is a typo or a unit
# mistake, refused before any site starts instead of failing (or diverging) in the rounds.
class TrainingSection(_Section):
    """How the sites train. ``rounds``, ``local_epochs``, ``learning_rate`` and the batches
    (``batch_size``, one size at every site, or ``steps_per_round``, the same number of local
    steps per epoch at every site) left out are chosen by ``privacy.planner`` from the smallest
    site's training-record count, once the sites have told it (``planned``)."""

    # A round is a message exchange with every site; published federated studies run tens to
    # hundreds, and 10,000 rounds would keep every site online for weeks.
    rounds: StrictInt | None = Field(None, ge=1, le=10_000)
    local_epochs: StrictInt | None = Field(None, ge=1, le=1_000)  # usual: 1 to 10 per round
    # Larger than any site's cohort (a batch of all its records is one step per epoch).
    batch_size: StrictInt | None = Field(None, ge=1, le=10_000_000)
    steps_per_round: StrictInt | None = Field(None, ge=1, le=1_000_000)
    # A DP-SGD step moves the weights by up to learning-rate x max-grad-norm; usual rates are
    # 0.01 to 10, and past 100 the model only diverges.
    learning_rate: StrictFloat | None = Field(None, gt=0, le=100)
    strategy: Literal[STRATEGIES] = "fedavg"  # type: ignore[valid-type]
    # FedProx's published mu runs 0.001 to 1; once mu x learning-rate exceeds 2 the proximal
    # term alone overshoots.
    proximal_mu: StrictFloat = Field(0.01, ge=0, le=100)
    trim_fraction: StrictFloat = Field(0.2, ge=0, lt=0.5)  # the share cut from each end
    krum_malicious: StrictInt = Field(0, ge=0)
    max_update_ratio: StrictFloat = Field(10.0, ge=0)  # 0: no check
    min_sites: StrictInt = Field(2, ge=1)
    # At least a second for a site to answer; at most a week for a round.
    round_timeout: StrictFloat = Field(600.0, ge=1, le=7 * 24 * 3600)
    # 0: the sites evaluate the final model only; k: also after every k-th round (as rounds).
    # Every evaluation spends part of the evaluation budget (measured: benchmarks/evaluation.py).
    evaluate_every: StrictInt = Field(0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _one_batch_rule(self) -> TrainingSection:
        if self.batch_size is not None and self.steps_per_round is not None:
            raise _problem("give batch-size or steps-per-round, not both", "steps-per-round")
        return self

    @property
    def is_planned(self) -> bool:
        """Every setting the planner can choose is set (``planned`` has run, or the spec gave
        them all)."""
        return None not in (self.rounds, self.local_epochs, self.learning_rate) and (
            self.batch_size is not None or self.steps_per_round is not None
        )

    def planned(
        self,
        smallest_n_train: int,
        target_epsilon: float | None = None,
        input_variance: float | None = None,
    ) -> TrainingSection:
        """The settings the spec leaves out, chosen for a federation whose smallest site has
        ``smallest_n_train`` training records (public) and a budget of ``target_epsilon``
        (None: without DP), for a binary logistic model of inputs of mean variance
        ``input_variance`` (None: any other model); those it gives are kept."""
        from privacy.planner import default_training  # the accountant's imports are heavy

        chosen = default_training([smallest_n_train], target_epsilon, input_variance)
        batches = {}
        if self.batch_size is None and self.steps_per_round is None:
            batches["steps_per_round"] = chosen["steps_per_round"]
        return self.model_copy(
            update={
                "rounds": self.rounds or chosen["rounds"],
                "local_epochs": self.local_epochs or chosen["local_epochs"],
                "learning_rate": self.learning_rate or chosen["learning_rate"],
                **batches,
            }
        )

    def batch_size_for(self, n_train: int) -> int:
        """A site's expected batch size: the spec's, or its records over the steps per epoch."""
        if self.batch_size is not None:
            return self.batch_size
        if self.steps_per_round is None:
            raise ValueError("the training settings are not planned yet")
        return math.ceil(n_train / self.steps_per_round)

    def evaluation_rounds(self) -> tuple[int, ...]:
        """The rounds after which the sites evaluate the global model (the last one always)."""
        if self.rounds is None:
            raise ValueError("the number of rounds is not planned yet")
        every = self.evaluate_every
        rounds = set(range(every, self.rounds + 1, every)) if every else set()
        return tuple(sorted(rounds | {self.rounds}))


class PrivacySection(_Section):
    """The run's DP budget and how it is spent and accounted."""

    enabled: StrictBool = True
    target_epsilon: StrictFloat = Field(3.0, gt=0)
    delta: StrictFloat = Field(1e-5, gt=0, lt=1)  # and well below 1/records per site
    # Usual clipping norms are 0.1 to 10; the noise is the norm times the noise multiplier, and
    # past 1,000 it drowns the gradient of any model on standardized features.
    max_grad_norm: StrictFloat = Field(1.0, gt=0, le=1_000)
    accountant: Literal[ACCOUNTANTS] = "prv"  # type: ignore[valid-type]
    standardization_share: StrictFloat = Field(0.1, gt=0, lt=1)
    # The test partition's budget for all evaluations of the run (None: target-epsilon). The
    # partitions are disjoint, so a participant's epsilon is the larger of the two.
    evaluation_epsilon: StrictFloat | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _meaningful_budgets(self) -> PrivacySection:
        for key in ("target-epsilon", "evaluation-epsilon"):
            epsilon = getattr(self, key.replace("-", "_"))
            if self.enabled and epsilon is not None and (why := epsilon_range_error(epsilon)):
                raise _problem(why, key)
        return self

    @property
    def evaluation_budget(self) -> float:
        if self.evaluation_epsilon is not None:
            return self.evaluation_epsilon
        return self.target_epsilon


class StudySpec(BaseModel):
    """The whole spec: its sections, and the rules between them. Frozen: one spec is shared by
    every round and site of a run, and a change (``with_overrides``) is a new, checked spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    study: StudySection
    features: FeatureSection
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    privacy: PrivacySection = PrivacySection()
    cohort: Cohort | None = None  # an OMOP site's rows, checked by federation.wire.cohort

    @model_validator(mode="after")
    def _one_role_per_column(self) -> StudySpec:
        """The study's columns are not features; a group column has declared levels."""
        study, features = self.study, self.features
        roles = {"label": study.label, "consent": study.consent, "split": study.split}
        if study.task == "survival":
            roles = {"time": study.time, "event": study.event, **roles}
        for role, column in roles.items():
            if column and column in features.columns:
                raise _problem(
                    f"the {role} column {column!r} cannot also be a feature", "study", role
                )
        for column in study.groups:
            if column in (*study.outcome_columns, study.consent, study.split):
                raise _problem(f"{column!r} cannot be a group column", "study", "groups")
            if column not in features.categorical and column not in study.group_levels:
                raise _problem(
                    f"{column!r} has no declared levels; make it a categorical feature or add "
                    "its levels to [study] group-levels (a site counts only declared levels, "
                    "never values it finds)",
                    "study",
                    "groups",
                )
        for column in study.group_levels:
            if column not in study.groups:
                raise _problem("not a group column", "study", "group-levels", column)
            if column in features.categorical:
                raise _problem(
                    "a categorical feature's levels are declared in [features] categorical",
                    "study",
                    "group-levels",
                    column,
                )
        return self

    def to_toml(self) -> str:
        """TOML text that ``parse_spec`` reads back to an equal spec, written by tomli-w (which
        escapes quotes, backslashes and control characters as TOML wants)."""
        return tomli_w.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True))

    def planned(self, smallest_n_train: int, target_epsilon: float | None = None) -> StudySpec:
        """This spec with its training settings planned (``TrainingSection.planned``) for its
        budget, or for ``target_epsilon`` where given (a privacy officer's what-if)."""
        epsilon = self.privacy.target_epsilon if self.privacy.enabled else None
        features, variance = self.features, None
        if self.study.task == "binary" and self.model.name == "logistic":
            levels = [len(levels) for levels in features.categorical.values()]
            variance = mean_input_variance(len(features.numeric), levels)
        training = self.training.planned(smallest_n_train, target_epsilon or epsilon, variance)
        return self.model_copy(update={"training": training})

    def with_overrides(
        self, *, source: str = "command-line overrides", **changes: dict[str, Any]
    ) -> StudySpec:
        """A copy with section fields replaced, e.g. ``training={"rounds": 5}``, checked as a
        spec file is; an error names ``source``."""
        data: dict[str, Any] = dict(self)
        for section, values in changes.items():
            fields = {**dict(getattr(self, section)), **values}
            data[section] = {_kebab(name): value for name, value in fields.items()}
        return _validated(data, source)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study spec file; raise ``SpecError`` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: study spec not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not TOML
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read study spec ({exc.__class__.__name__})") from None
    return parse_spec(text, source=str(path))


def spec_from_run_config(run_config: Mapping[str, Any]) -> StudySpec:
    """The study a Flower run carries: TOML text under ``study`` or a path under ``study-file``."""
    if run_config.get(RUN_STUDY):
        return parse_spec(str(run_config[RUN_STUDY]), source=f"run config '{RUN_STUDY}'")
    if run_config.get(RUN_STUDY_FILE):
        return load_spec(str(run_config[RUN_STUDY_FILE]))
    raise SpecError(f"the run config has no study spec: pass --run-config {RUN_STUDY_FILE}=PATH")


def parse_spec(text: str, source: str = "study spec") -> StudySpec:
    """Validate TOML text into a ``StudySpec``; every error names the key to fix."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: not valid TOML ({exc})") from None
    if "cohort" in raw:  # its own errors name its keys (federation.wire.cohort)
        raw["cohort"] = parse_cohort(raw["cohort"], source)
    spec = _validated(raw, source, by_name=False)  # a file's keys are kebab case
    if spec.cohort is not None:
        check_cohort_columns(spec, source)
    return spec


def _validated(data: dict[str, Any], source: str, **how: bool) -> StudySpec:
    try:
        return StudySpec.model_validate(data, **how)
    except ValidationError as exc:
        raise SpecError(f"{source}: {_describe(exc.errors()[0])}") from None


def _describe(error: ErrorDetails) -> str:
    """``[section] key: problem`` for pydantic's error, in the words of a spec's keys."""
    ctx = error.get("ctx", {})
    loc = error["loc"][:-1] if error["loc"][-1:] == ("[key]",) else error["loc"]
    where = [part for part in loc if isinstance(part, str)] + list(ctx.get("key", ()))
    if not where:
        return _problem_text(error, where)
    section, *key = where
    if not key and error["type"] == "missing":
        return f"missing section [{section}]"
    if not key and error["type"] == "extra_forbidden":
        sections = ", ".join(f"[{name}]" for name in StudySpec.model_fields)
        return f"unknown section [{section}]; expected {sections}"
    if not key:
        return f"[{section}] {_problem_text(error, where)}"
    return f"[{section}] {'.'.join(key)}: {_problem_text(error, where)}"


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a table",
}
_LIMITS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")


def _problem_text(error: ErrorDetails, where: list[str]) -> str:
    kind, value, ctx = error["type"], error["input"], error.get("ctx", {})
    field = _section_fields(where[0]).get(where[1]) if len(where) == 2 else None
    if kind == "spec":
        return ctx["problem"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return f"unknown key; expected one of {', '.join(_section_fields(where[0]))}"
    if kind == "model_type":
        return "must be a table"
    if kind in _EXPECTED:
        got = "a boolean" if isinstance(value, bool) else type(value).__name__
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind == "literal_error" and field is not None:
        return f"{value!r} is not one of {', '.join(map(repr, get_args(field.annotation)))}"
    if kind in _LIMITS and field is not None:
        integer = kind != "finite_number" and all(isinstance(v, int) for v in ctx.values())
        return _out_of_range(field, value, integer)
    return error["msg"]


def _section_fields(section: str) -> dict[str, FieldInfo]:
    """A section's fields by the key a spec file names them with."""
    model = StudySpec.model_fields[section].annotation
    return {info.alias or name: info for name, info in model.model_fields.items()}


def _out_of_range(field: FieldInfo, value: float, integer: bool) -> str:
    """scikit-learn's way: the range, then what was given."""
    low = next((m for m in field.metadata if isinstance(m, Ge | Gt)), None)
    high = next((m for m in field.metadata if isinstance(m, Le | Lt)), None)

    def show(limit: Ge | Gt | Le | Lt) -> str:
        number = getattr(limit, type(limit).__name__.lower())
        return str(number) if integer else f"{number:g}"

    got = repr(value if integer else float(value))
    if low is not None and high is not None:
        span = f"{'(' if isinstance(low, Gt) else '['}{show(low)}, {show(high)}"
        span += ")" if isinstance(high, Lt) else "]"
        return f"must be {'an integer' if integer else 'a number'} in {span}, got {got}"
    if not math.isfinite(value):
        return "must be a finite number"
    if isinstance(low, Gt):
        return f"must be {'positive' if show(low) == '0' else 'above ' + show(low)}, got {got}"
    if isinstance(low, Ge):
        return f"must be at least {show(low)}, got {got}"
    return f"must be {'below' if isinstance(high, Lt) else 'at most'} {show(high)}, got {got}"


def model_cuts(spec: StudySpec) -> tuple[float, ...]:
    """The interval ends of a survival study's hazard model (``models.registry.build_model``'s
    ``cuts``); none for a binary study."""
    return spec.study.intervals if spec.study.task == "survival" else ()


def federated_columns(
    spec: StudySpec, bounds: Mapping[str, tuple[float, float]] | None = None
) -> list[int]:
    """Indices of the numeric columns whose scaling is pooled across sites: every one without
    DP; under DP those with bounds (``bounds``: the declared and the privately estimated ones,
    default the declared ones)."""
    if spec.features.scaling != "federated":
        return []
    numeric = spec.features.numeric
    if not spec.privacy.enabled:
        return list(range(len(numeric)))
    bounds = spec.features.bounds if bounds is None else bounds
    return [i for i, column in enumerate(numeric) if column in bounds]


def estimated_columns(spec: StudySpec) -> list[str]:
    """The numeric columns whose bounds the sites estimate privately before pooling their
    scaling (``privacy.bounds``): under DP with federated scaling, those the spec declares no
    bounds for."""
    if not spec.privacy.enabled or spec.features.scaling != "federated":
        return []
    return [c for c in spec.features.numeric if c not in spec.features.bounds]


def feature_names(spec: StudySpec) -> list[str]:
    """Names of the model's input columns, in order: the numeric columns, then an input per
    categorical level but each column's first, its reference (``wire.encoding``)."""
    names = list(spec.features.numeric)
    for column, levels in spec.features.categorical.items():
        names += [f"{column}={level}" for level in levels[1:]]
    return names
