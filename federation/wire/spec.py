"""The study spec: parsed and validated once into a typed object the rest of the code trusts.

A spec is a TOML file written by the central team. It travels to every site inside the run
config as TOML text (``StudySpec.to_toml``), so the site checks the very spec the server used.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from federation.errors import SpecError
from federation.wire.protocol import RUN_STUDY, RUN_STUDY_FILE
from models import MODEL_NAMES
from privacy.limits import epsilon_range_error

if TYPE_CHECKING:
    from federation.wire.cohort import Cohort

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
ACCOUNTANTS = ("prv", "rdp")
MISSING_RULES = ("impute", "drop")
SCALINGS = ("federated", "site")
TASKS = ("binary", "survival")


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low`` to ``high``, ``low`` itself excluded
    where ``open_low``."""

    low: float
    high: float
    open_low: bool = False

    def error(self, value: float) -> str | None:
        """Why ``value`` is outside (scikit-learn's way: the range, then what was given)."""
        above_low = value > self.low if self.open_low else value >= self.low
        if above_low and value <= self.high:  # False for NaN
            return None
        kind = "an integer" if isinstance(self.low, int) else "a number"
        low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.low, self.high))
        span = f"{'(' if self.open_low else '['}{low}, {high}]"
        return f"must be {kind} in {span}, got {value!r}"


# The settings' ranges, checked for a spec file and for command-line overrides alike. The upper
# limits lie far past any real study, so a value past one is a typo or a unit mistake, refused
# before any site starts instead of failing (or diverging) in the rounds.
RANGES: dict[tuple[str, str], Range] = {
    # An MLP's initial weights; seeds count from 0 (numpy refuses a negative one).
    ("study", "seed"): Range(0, 2**63 - 1),
    # A round is a message exchange with every site; published federated studies run tens to
    # hundreds, and 10,000 rounds would keep every site online for weeks.
    ("training", "rounds"): Range(1, 10_000),
    ("training", "local-epochs"): Range(1, 1_000),  # usual: 1 to 10 passes per round
    # Larger than any site's cohort (a batch of all its records is one step per epoch).
    ("training", "batch-size"): Range(1, 10_000_000),
    ("training", "steps-per-round"): Range(1, 1_000_000),
    # A DP-SGD step moves the weights by up to learning-rate x max-grad-norm; usual rates are
    # 0.01 to 10, and past 100 the model only diverges.
    ("training", "learning-rate"): Range(0.0, 100.0, open_low=True),
    # FedProx's published mu runs 0.001 to 1; once mu x learning-rate exceeds 2 the proximal
    # term alone overshoots.
    ("training", "proximal-mu"): Range(0.0, 100.0),
    # At least a second for a site to answer; at most a week for a round.
    ("training", "round-timeout"): Range(1.0, 7 * 24 * 3600.0),
    ("training", "evaluate-every"): Range(0, 10_000),  # as rounds; 0: the final model only
    # Usual clipping norms are 0.1 to 10; the noise is the norm times the noise multiplier, and
    # past 1,000 it drowns the gradient of any model on standardized features.
    ("privacy", "max-grad-norm"): Range(0.0, 1_000.0, open_low=True),
}


@dataclass(frozen=True)
class StudySection:
    """The study's outcome: ``label`` (0/1) for a binary task; ``time`` (days) and ``event``
    (0/1) for a survival task, with the ``horizons`` (days) its risks are read at and the
    ``intervals`` (cut points in days, the horizons among them) of its discrete-time hazard
    model, fixed here before any data is seen. The survival keys are None for a binary study,
    so its TOML (and digest) is what it was before survival studies existed."""

    name: str
    label: str | None
    task: str = "binary"
    groups: tuple[str, ...] = ()
    # Levels of group columns that are not categorical features; a DP table of a group column
    # needs its cells fixed before any data is seen (``allfed analyze``).
    group_levels: dict[str, tuple[str, ...]] = field(default_factory=dict)
    consent: str | None = None
    split: str | None = None
    test_fraction: float = 0.3
    seed: int = 0
    time: str | None = None
    event: str | None = None
    horizons: tuple[float, ...] | None = None
    intervals: tuple[float, ...] | None = None

    @property
    def outcome(self) -> str:
        """The outcome column: the label, or a survival study's event."""
        return self.event if self.task == "survival" else self.label

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """Every column that holds the outcome (none of them may be a feature)."""
        return (self.time, self.event) if self.task == "survival" else (self.label,)


@dataclass(frozen=True)
class FeatureSection:
    numeric: tuple[str, ...] = ()
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    scaling: str = "federated"
    na_values: tuple[str, ...] = ()
    # Values outside a column's plausible range are errors (a unit or entry mistake, not a
    # patient); between it and the bounds they are clipped with a warning.
    plausible: dict[str, tuple[float, float]] = field(default_factory=dict)

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


@dataclass(frozen=True)
class ModelSection:
    name: str = "logistic"
    hidden: tuple[int, ...] = (32,)


@dataclass(frozen=True)
class TrainingSection:
    """How the sites train. ``rounds``, ``local_epochs``, ``learning_rate`` and the batches
    (``batch_size``, one size at every site, or ``steps_per_round``, the same number of local
    steps per epoch at every site) left out are chosen by ``privacy.planner`` from the smallest
    site's training-record count, once the sites have told it (``planned``)."""

    rounds: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    steps_per_round: int | None = None
    learning_rate: float | None = None
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    trim_fraction: float = 0.2
    krum_malicious: int = 0
    max_update_ratio: float = 10.0
    min_sites: int = 2
    round_timeout: float = 600.0
    # 0: the sites evaluate the final model only; k: also after every k-th round. Every
    # evaluation spends part of the evaluation budget (measured: benchmarks/evaluation.py).
    evaluate_every: int = 0

    @property
    def is_planned(self) -> bool:
        """Every setting the planner can choose is set (``planned`` has run, or the spec gave
        them all)."""
        return None not in (self.rounds, self.local_epochs, self.learning_rate) and (
            self.batch_size is not None or self.steps_per_round is not None
        )

    def planned(
        self, smallest_n_train: int, target_epsilon: float | None = None
    ) -> TrainingSection:
        """The settings the spec leaves out, chosen for a federation whose smallest site has
        ``smallest_n_train`` training records (public) and a budget of ``target_epsilon``
        (None: without DP); those it gives are kept."""
        from privacy.planner import default_training  # the accountant's imports are heavy

        chosen = default_training([smallest_n_train], target_epsilon)
        batches = {}
        if self.batch_size is None and self.steps_per_round is None:
            batches["steps_per_round"] = chosen["steps_per_round"]
        return replace(
            self,
            rounds=self.rounds or chosen["rounds"],
            local_epochs=self.local_epochs or chosen["local_epochs"],
            learning_rate=self.learning_rate or chosen["learning_rate"],
            **batches,
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


@dataclass(frozen=True)
class PrivacySection:
    enabled: bool = True
    target_epsilon: float = 3.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    standardization_share: float = 0.1
    # The test partition's budget for all evaluations of the run (None: target-epsilon). The
    # partitions are disjoint, so a participant's epsilon is the larger of the two.
    evaluation_epsilon: float | None = None

    @property
    def evaluation_budget(self) -> float:
        return (
            self.evaluation_epsilon
            if self.evaluation_epsilon is not None
            else (self.target_epsilon)
        )


@dataclass(frozen=True)
class StudySpec:
    study: StudySection
    features: FeatureSection
    model: ModelSection = ModelSection()
    training: TrainingSection = TrainingSection()
    privacy: PrivacySection = PrivacySection()
    cohort: Cohort | None = None  # an OMOP site's rows (federation.wire.cohort)

    def to_toml(self) -> str:
        """Serialize to TOML text that ``parse_spec`` reads back to an equal spec."""
        lines: list[str] = []
        for section in fields(self):
            if section.name == "cohort":
                continue
            lines.append(f"[{section.name}]")
            for item in fields(getattr(self, section.name)):
                value = getattr(getattr(self, section.name), item.name)
                if value is None:
                    continue
                lines.append(f"{item.name.replace('_', '-')} = {_toml_value(value)}")
            lines.append("")
        if self.cohort is not None:
            lines.append(self.cohort.to_toml())
        return "\n".join(lines)

    def planned(self, smallest_n_train: int) -> StudySpec:
        """This spec with its training settings planned (``TrainingSection.planned``) for its
        budget."""
        epsilon = self.privacy.target_epsilon if self.privacy.enabled else None
        return replace(self, training=self.training.planned(smallest_n_train, epsilon))

    def with_overrides(self, **changes: dict[str, Any]) -> StudySpec:
        """Return a copy with section fields replaced, e.g. ``training={"rounds": 5}``."""
        sections = {
            name: replace(getattr(self, name), **values) for name, values in changes.items()
        }
        spec = replace(self, **sections)
        _check_consistency(spec, "command-line overrides")
        return spec


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
    reader = _Reader(raw, source)
    spec = StudySpec(
        study=_read_study(reader.section("study", required=True)),
        features=_read_features(reader.section("features", required=True)),
        model=_read_model(reader.section("model")),
        training=_read_training(reader.section("training")),
        privacy=_read_privacy(reader.section("privacy")),
        cohort=_read_cohort(raw, source),
    )
    reader.reject_unknown_sections()
    _check_consistency(spec, source)
    if spec.cohort is not None:
        from federation.wire.cohort import check_cohort_columns

        check_cohort_columns(spec, source)
    return spec


def _read_cohort(raw: dict[str, Any], source: str) -> Cohort | None:
    """``[cohort]`` is parsed by its own module, imported only by the studies that have one."""
    if "cohort" not in raw:
        return None
    from federation.wire.cohort import parse_cohort

    return parse_cohort(raw["cohort"], source)


class _Reader:
    """Typed access to one TOML table, with errors that name ``[section] key``."""

    SECTIONS = ("study", "features", "model", "training", "privacy", "cohort")

    def __init__(self, raw: dict[str, Any], source: str, name: str = "") -> None:
        self.raw, self.source, self.name = raw, source, name
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> SpecError:
        where = f"[{self.name}] {key}" if self.name else key
        return SpecError(f"{self.source}: {where}: {problem}")

    def section(self, name: str, required: bool = False) -> _Reader:
        if name not in self.raw:
            if required:
                raise SpecError(f"{self.source}: missing section [{name}]")
            return _Reader({}, self.source, name)
        value = self.raw[name]
        if not isinstance(value, dict):
            raise SpecError(f"{self.source}: [{name}] must be a table")
        return _Reader(value, self.source, name)

    def reject_unknown_sections(self) -> None:
        unknown = sorted(set(self.raw) - set(self.SECTIONS))
        if unknown:
            raise SpecError(
                f"{self.source}: unknown section [{unknown[0]}]; "
                f"expected {', '.join(f'[{s}]' for s in self.SECTIONS)}"
            )

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, choices=()):
        self.used.add(key)
        if key not in self.raw:
            if default is ...:
                raise self.fail(key, "required")
            return default
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"expected {_kind_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        if choices and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def column(self, key: str, default: Any = ...) -> str | None:
        """A column name (``_column_name_problem``; an empty ``consent`` would silently use
        every record)."""
        value = self.get(key, str, default)
        if value is not None and (problem := _column_name_problem(value)):
            raise self.fail(key, problem)
        return value

    def string_list(self, key: str, *, names: bool = True) -> tuple[str, ...]:
        """Distinct non-empty strings; column names (``names``) also as a site can match them."""
        values = self.get(key, list, [])
        for item in values:
            if not isinstance(item, str) or not item:
                raise self.fail(key, "expected a list of column names")
            if names and (problem := _column_name_problem(item)):
                raise self.fail(key, problem)
        if len(set(values)) != len(values):
            raise self.fail(key, "lists a column twice")
        return tuple(values)

    def positive(self, key: str, kind: type, default: Any, *, allow_zero: bool = False):
        value = self.get(key, kind, default)
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(key, "must be a finite number")
        if value < 0 or (value == 0 and not allow_zero):
            raise self.fail(key, f"must be {'at least 0' if allow_zero else 'positive'}")
        return value

    def check_known(self, known: tuple[str, ...]) -> None:
        unknown = sorted(set(self.raw) - set(known))
        if unknown:
            raise self.fail(unknown[0], f"unknown key; expected one of {', '.join(known)}")


def _column_name_problem(name: str) -> str | None:
    """Why ``name`` can name no column of a site's file: a site reads its header names with
    the surrounding whitespace stripped, so an empty name, or one with whitespace around it,
    never matches and would fail at every site, in the run."""
    if not name.strip():
        return f"expected a column name, got {'an empty string' if not name else repr(name)}"
    if name != name.strip():
        return f"column name {name!r} has whitespace around it; write {name.strip()!r}"
    return None


def _read_study(r: _Reader) -> StudySection:
    r.check_known(
        (
            "name",
            "task",
            "label",
            "groups",
            "group-levels",
            "consent",
            "split",
            "test-fraction",
            "seed",
            "time",
            "event",
            "horizons",
            "intervals",
        )
    )
    test_fraction = r.get("test-fraction", float, 0.3)
    if not 0.0 < test_fraction < 1.0:
        raise r.fail("test-fraction", "must be between 0 and 1 (exclusive)")
    task = r.get("task", str, "binary", choices=TASKS)
    if task == "binary":
        for key in ("time", "event", "horizons", "intervals"):
            if key in r.raw:
                raise r.fail(key, 'applies to task = "survival" only')
    outcome = _read_survival(r) if task == "survival" else {"label": r.column("label")}
    return StudySection(
        name=r.get("name", str, "study") or "study",
        task=task,
        **outcome,
        groups=r.string_list("groups"),
        group_levels=_levels_table(r, "group-levels"),
        consent=r.column("consent", None),
        split=r.column("split", None),
        test_fraction=test_fraction,
        seed=r.get("seed", int, 0),
    )


def _read_survival(r: _Reader) -> dict[str, Any]:
    """A survival study's outcome keys: ``time`` and ``event`` columns (no ``label``: the
    outcome is the pair), ``horizons`` and the hazard model's ``intervals`` (default: the
    horizons), every horizon one of the intervals' cut points."""
    if "label" in r.raw:
        raise r.fail(
            "label",
            'a survival study has no label: its outcome is the "time" and "event" columns',
        )
    horizons = _days(r, "horizons", None)
    intervals = _days(r, "intervals", horizons)
    missing = [h for h in horizons if h not in intervals]
    if missing:
        raise r.fail(
            "intervals",
            f"must include every horizon as a cut point (missing {missing[0]:g}): a horizon's "
            "risk is read at the end of an interval",
        )
    return {
        "label": None,
        "time": r.column("time"),
        "event": r.column("event"),
        "horizons": horizons,
        "intervals": intervals,
    }


def _days(r: _Reader, key: str, default: tuple[float, ...] | None) -> tuple[float, ...]:
    """A non-empty, increasing list of positive, finite numbers of days."""
    values = r.get(key, list, ... if default is None else list(default))
    ok = bool(values) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok or any(b <= a for a, b in pairwise(values)):
        raise r.fail(key, "expected a non-empty, increasing list of positive numbers of days")
    return tuple(float(v) for v in values)


def model_cuts(spec: StudySpec) -> tuple[float, ...]:
    """The interval ends of a survival study's hazard model (``models.registry.build_model``'s
    ``cuts``); none for a binary study."""
    return spec.study.intervals if spec.study.task == "survival" else ()


def _read_features(r: _Reader) -> FeatureSection:
    r.check_known(
        ("numeric", "categorical", "missing", "bounds", "scaling", "na-values", "plausible")
    )
    numeric = r.string_list("numeric")
    categorical = _levels_table(r, "categorical")
    missing: dict[str, str] = {}
    for column, rule in r.get("missing", dict, {}).items():
        if rule not in MISSING_RULES:
            raise r.fail(f"missing.{column}", f'expected "impute" or "drop", got {rule!r}')
        missing[column] = rule
    return FeatureSection(
        numeric=numeric,
        categorical=categorical,
        missing=missing,
        bounds=_ranges(r, "bounds"),
        scaling=r.get("scaling", str, "federated", choices=SCALINGS),
        na_values=r.string_list("na-values", names=False),
        plausible=_ranges(r, "plausible"),
    )


def _ranges(r: _Reader, key: str) -> dict[str, tuple[float, float]]:
    """A table of column -> [LOW, HIGH], finite with LOW < HIGH."""
    ranges: dict[str, tuple[float, float]] = {}
    for column, pair in r.get(key, dict, {}).items():
        ok = isinstance(pair, list) and len(pair) == 2
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        if not ok or not all(math.isfinite(v) for v in pair) or pair[0] >= pair[1]:
            raise r.fail(f"{key}.{column}", "expected [LOW, HIGH] with LOW < HIGH")
        if not math.isfinite(pair[1] - pair[0]):
            raise r.fail(f"{key}.{column}", "HIGH - LOW is too large to be a finite number")
        ranges[column] = (float(pair[0]), float(pair[1]))
    return ranges


def _levels_table(r: _Reader, key: str) -> dict[str, tuple[str, ...]]:
    """A table of column -> non-empty list of distinct levels (read as text)."""
    table: dict[str, tuple[str, ...]] = {}
    for column, levels in r.get(key, dict, {}).items():
        if problem := _column_name_problem(column):
            raise r.fail(f"{key}.{column}", problem)
        if (
            not isinstance(levels, list)
            or not levels
            or not all(isinstance(v, str | int) and not isinstance(v, bool) for v in levels)
        ):
            raise r.fail(f"{key}.{column}", "expected a non-empty list of allowed levels")
        if "" in levels:
            raise r.fail(
                f"{key}.{column}", "lists an empty level (an empty cell is a missing value)"
            )
        as_text = tuple(str(v) for v in levels)
        if len(set(as_text)) != len(as_text):
            raise r.fail(f"{key}.{column}", "lists a level twice")
        table[column] = as_text
    return table


def _read_model(r: _Reader) -> ModelSection:
    r.check_known(("name", "hidden"))
    hidden = r.get("hidden", list, [32])
    if not hidden or not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise r.fail("hidden", "expected a non-empty list of positive layer sizes")
    return ModelSection(
        name=r.get("name", str, "logistic", choices=MODEL_NAMES), hidden=tuple(hidden)
    )


def _read_training(r: _Reader) -> TrainingSection:
    keys = (
        "rounds",
        "local-epochs",
        "batch-size",
        "steps-per-round",
        "learning-rate",
        "strategy",
        "proximal-mu",
        "trim-fraction",
        "krum-malicious",
        "max-update-ratio",
        "min-sites",
        "round-timeout",
        "evaluate-every",
    )
    r.check_known(keys)
    trim_fraction = r.positive("trim-fraction", float, 0.2, allow_zero=True)
    if trim_fraction >= 0.5:
        raise r.fail("trim-fraction", "must be below 0.5 (the share cut from each end)")
    if "batch-size" in r.raw and "steps-per-round" in r.raw:
        raise r.fail("steps-per-round", "give batch-size or steps-per-round, not both")
    return TrainingSection(
        rounds=r.get("rounds", int, None),  # each in RANGES, checked by _check_ranges
        local_epochs=r.get("local-epochs", int, None),
        batch_size=r.get("batch-size", int, None),
        steps_per_round=r.get("steps-per-round", int, None),
        learning_rate=r.get("learning-rate", float, None),
        strategy=r.get("strategy", str, "fedavg", choices=STRATEGIES),
        proximal_mu=r.get("proximal-mu", float, 0.01),
        trim_fraction=trim_fraction,
        krum_malicious=r.positive("krum-malicious", int, 0, allow_zero=True),
        max_update_ratio=r.positive("max-update-ratio", float, 10.0, allow_zero=True),
        min_sites=r.positive("min-sites", int, 2),
        round_timeout=r.get("round-timeout", float, 600.0),
        evaluate_every=r.get("evaluate-every", int, 0),
    )


def _read_privacy(r: _Reader) -> PrivacySection:
    r.check_known(
        (
            "enabled",
            "target-epsilon",
            "delta",
            "max-grad-norm",
            "accountant",
            "standardization-share",
            "evaluation-epsilon",
        )
    )
    delta = r.positive("delta", float, 1e-5)
    if delta >= 1.0:
        raise r.fail("delta", "must be below 1 (and well below 1/records per site)")
    share = r.positive("standardization-share", float, 0.1)
    if share >= 1.0:
        raise r.fail("standardization-share", "must be below 1")
    return PrivacySection(
        enabled=r.get("enabled", bool, True),
        target_epsilon=r.positive("target-epsilon", float, 3.0),
        delta=delta,
        max_grad_norm=r.get("max-grad-norm", float, 1.0),  # in RANGES
        accountant=r.get("accountant", str, "prv", choices=ACCOUNTANTS),
        standardization_share=share,
        evaluation_epsilon=r.positive("evaluation-epsilon", float, None),
    )


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
    """Names of the model's input columns, in order."""
    names = list(spec.features.numeric)
    for column, levels in spec.features.categorical.items():
        names += [f"{column}={level}" for level in levels]
    return names


def _check_consistency(spec: StudySpec, source: str) -> None:
    """Cross-section rules: a column has one role, rules name declared columns."""
    features = spec.features
    if not features.columns:
        raise SpecError(f"{source}: [features] declares no numeric or categorical column")
    both = set(features.numeric) & set(features.categorical)
    if both:
        raise SpecError(f"{source}: column {sorted(both)[0]!r} is both numeric and categorical")
    label = spec.study.label
    roles = {"label": label, "consent": spec.study.consent, "split": spec.study.split}
    if spec.study.task == "survival":
        roles = {"time": spec.study.time, "event": spec.study.event, **roles}
        _check_survival(spec, source)
    for role, column in roles.items():
        if column and column in features.columns:
            raise SpecError(f"{source}: the {role} column {column!r} cannot also be a feature")
    tables = (
        ("missing", features.missing),
        ("bounds", features.bounds),
        ("plausible", features.plausible),
    )
    for table, columns in tables:
        for column in columns:
            if column not in features.columns:
                raise SpecError(f"{source}: [features] {table}.{column}: not a declared feature")
    for table, ranges in (("bounds", features.bounds), ("plausible", features.plausible)):
        for column in ranges:
            if column not in features.numeric:
                raise SpecError(
                    f"{source}: [features] {table}.{column}: {table} apply to numeric features"
                )
    for column, (low, high) in features.plausible.items():
        if column in features.bounds:
            bound_low, bound_high = features.bounds[column]
            if low > bound_low or high < bound_high:
                raise SpecError(
                    f"{source}: [features] plausible.{column}: must contain its bounds "
                    f"[{bound_low:g}, {bound_high:g}]"
                )
    for column in spec.study.groups:
        if column in (*spec.study.outcome_columns, spec.study.consent, spec.study.split):
            raise SpecError(f"{source}: [study] groups: {column!r} cannot be a group column")
    for column in spec.study.groups:
        if column not in features.categorical and column not in spec.study.group_levels:
            raise SpecError(
                f"{source}: [study] groups: {column!r} has no declared levels; make it a "
                "categorical feature or add its levels to [study] group-levels (a site counts "
                "only declared levels, never values it finds)"
            )
    for column in spec.study.group_levels:
        if column not in spec.study.groups:
            raise SpecError(f"{source}: [study] group-levels.{column}: not a group column")
        if column in features.categorical:
            raise SpecError(
                f"{source}: [study] group-levels.{column}: a categorical feature's levels are "
                "declared in [features] categorical"
            )
    if not 0 < spec.study.test_fraction < 1:
        raise SpecError(f"{source}: [study] test-fraction must be between 0 and 1")
    _check_ranges(spec, source)
    if spec.training.min_sites < 1:
        raise SpecError(f"{source}: [training] min-sites must be at least 1")
    if spec.training.batch_size is not None and spec.training.steps_per_round is not None:
        raise SpecError(f"{source}: [training] give batch-size or steps-per-round, not both")
    if not 0 <= spec.training.trim_fraction < 0.5:
        raise SpecError(f"{source}: [training] trim-fraction must be at least 0 and below 0.5")
    if spec.training.strategy not in STRATEGIES:
        raise SpecError(
            f"{source}: [training] strategy {spec.training.strategy!r} is not one of "
            f"{', '.join(STRATEGIES)}"
        )
    if not spec.privacy.target_epsilon > 0:
        raise SpecError(f"{source}: [privacy] target-epsilon must be positive")
    budgets = (
        ("target-epsilon", spec.privacy.target_epsilon),
        ("evaluation-epsilon", spec.privacy.evaluation_epsilon),
    )
    for key, epsilon in budgets:
        if spec.privacy.enabled and epsilon is not None and (why := epsilon_range_error(epsilon)):
            raise SpecError(f"{source}: [privacy] {key}: {why}")
    if not 0 < spec.privacy.delta < 1:
        raise SpecError(f"{source}: [privacy] delta must be between 0 and 1")


def _check_survival(spec: StudySpec, source: str) -> None:
    """A survival study's columns have one role each; OMOP sources give no time yet."""
    study = spec.study
    others = {"consent": study.consent, "split": study.split}
    if study.time == study.event:
        raise SpecError(f"{source}: [study] time and event name the same column {study.time!r}")
    for role, column in others.items():
        if column in (study.time, study.event):
            raise SpecError(f"{source}: the {role} column {column!r} cannot also be time or event")
    if spec.cohort is not None:
        raise SpecError(
            f'{source}: [cohort]: task = "survival" does not read OMOP sources yet; give the '
            "sites files with the time and event columns"
        )


def _check_ranges(spec: StudySpec, source: str) -> None:
    """Every setting in ``RANGES`` inside its range (from a file or a command-line override)."""
    for (section, key), allowed in RANGES.items():
        value = getattr(getattr(spec, section), key.replace("-", "_"))
        if value is None:
            continue
        kind = type(allowed.low)
        if isinstance(value, bool) or not isinstance(value, int | kind):
            problem = f"expected {_kind_name(kind)}, got {type(value).__name__}"
        else:
            problem = allowed.error(value)
        if problem:
            raise SpecError(f"{source}: [{section}] {key}: {problem}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_string(text: str) -> str:
    """A TOML basic string as tomli_w writes one: quotes, backslashes and every control character
    but tab escaped (a hand-made escape missed ``\\r``, ``\\x00``, ``\\x1b``, ...)."""
    return tomli_w.dumps({"s": text}).removeprefix("s = ").removesuffix("\n")
