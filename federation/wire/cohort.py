"""The study spec's ``[cohort]`` section: who enters, what the outcome is, which covariates count.

It follows OHDSI's conventions where they fit: a concept set is Circe's (the listed concepts, and
with ``descendants`` every valid concept below them in ``concept_ancestor``); the index event is a
criterion's first occurrence in the person's history (Circe's "first time in the person's
history", a new-user design) or every occurrence; the time at risk and the prior-outcome exclusion
are PatientLevelPrediction's (``riskWindowStart``/``End`` relative to index, ``minTimeAtRisk``
with ``includeAllOutcomes``, ``priorOutcomeLookback``); a survival study's time to event is
CohortMethod's (the first outcome in the time at risk, censored at the end of the observation
period or of the window, whichever comes first); covariates are FeatureExtraction's
(demographics at index, binary presence of a concept set in a window ending at index, age as
year of index minus year of birth).

The central team writes it; every site turns it into the same typed table, one row per cohort
entry. ``parse_cohort`` validates it once with errors that name the key.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)

from federation.errors import SpecError

if TYPE_CHECKING:
    from federation.wire.spec import StudySpec

DOMAINS = ("condition", "drug", "procedure", "measurement", "observation", "visit")
DEATH = "death"  # the death table: a survival outcome without a concept set
DEMOGRAPHICS = ("gender", "race", "ethnicity")  # person.<kind>_concept_id, categorical
PRESENCE = ("condition", "drug", "procedure", "observation", "visit")  # binary 0/1
OTHER = "other"  # a declared level that takes every concept id not declared
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=_kebab)


Window = tuple[StrictInt, StrictInt]


def _check_window(window: Window, name: str) -> Window:
    if window[0] > window[1]:
        raise ValueError(f"{name} must be [START, END] with START <= END (days from index)")
    return window


class ConceptSet(_Model):
    """Concept ids (positive, distinct) and whether their descendants count."""

    concepts: Annotated[tuple[Annotated[StrictInt, Field(gt=0)], ...], Field(min_length=1)]
    descendants: StrictBool = True

    @model_validator(mode="after")
    def _distinct(self):
        if self.concepts and len(set(self.concepts)) != len(self.concepts):
            raise ValueError("concepts lists a concept id twice")
        return self


class Target(ConceptSet):
    domain: Literal[DOMAINS]  # type: ignore[valid-type]
    events: Literal["first", "all"] = "first"
    prior_observation: Annotated[StrictInt, Field(ge=0)] = 365
    age: tuple[Annotated[StrictInt, Field(ge=0)], Annotated[StrictInt, Field(ge=0)]] | None = None

    @model_validator(mode="after")
    def _age(self):
        if self.age is not None and self.age[0] > self.age[1]:
            raise ValueError("age must be [MIN, MAX] with MIN <= MAX (years at index)")
        return self


class Outcome(ConceptSet):
    domain: Literal[DOMAINS]  # type: ignore[valid-type]
    window: Window = (1, 365)
    min_time_at_risk: Annotated[StrictInt, Field(ge=0)] | None = None
    prior_outcome_lookback: Annotated[StrictInt, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _window(self):
        _check_window(self.window, "window")
        if self.window[0] < 0:
            raise ValueError("window must start on or after the index day (0)")
        return self

    @property
    def required_time_at_risk(self) -> int:
        """Days of observation from the window's start that an entry without the outcome
        needs (PatientLevelPrediction's minTimeAtRisk); by default the whole window."""
        if self.min_time_at_risk is not None:
            return self.min_time_at_risk
        return self.window[1] - self.window[0]


class SurvivalOutcome(ConceptSet):
    """A survival study's event: death, or the first event of a concept set after index, in
    the follow-up ``window`` (days from index; without one, from day 1 to the end of the
    observation period). Censoring is at the earlier of the observation period's end and the
    window's end."""

    domain: Literal[(DEATH, *DOMAINS)]  # type: ignore[valid-type]
    concepts: tuple[Annotated[StrictInt, Field(gt=0)], ...] | None = None  # type: ignore[assignment]
    window: Window | None = None
    prior_outcome_lookback: Annotated[StrictInt, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _event(self):
        if self.window is not None:
            _check_window(self.window, "window")
            if self.window[0] < 0:
                raise ValueError("window must start on or after the index day (0)")
        if self.domain == DEATH:
            if self.concepts is not None:
                raise ValueError('concepts: death (domain = "death") has no concept set')
            if self.prior_outcome_lookback is not None:
                raise ValueError("prior-outcome-lookback: a death cannot precede the index")
        elif not self.concepts:
            raise ValueError(f"concepts: required for domain = {self.domain!r} (a concept set)")
        return self

    @property
    def start(self) -> int:
        """The first day of follow-up that an event counts on (day 1 unless the window says)."""
        return 1 if self.window is None else self.window[0]

    @property
    def end(self) -> int | None:
        """The window's last day, or None: follow-up to the end of the observation period."""
        return None if self.window is None else self.window[1]


class AgeCovariate(_Model):
    kind: Literal["age"]


class DemographicCovariate(_Model):
    kind: Literal[DEMOGRAPHICS]  # type: ignore[valid-type]


class PresenceCovariate(ConceptSet):
    kind: Literal[PRESENCE]  # type: ignore[valid-type]
    window: Window = (-365, 0)

    @model_validator(mode="after")
    def _window(self):
        return _covariate_window(self)


class MeasurementCovariate(ConceptSet):
    """The latest value in the window, of a measurement recorded in one of ``units``."""

    kind: Literal["measurement"]
    window: Window = (-365, 0)
    units: Annotated[tuple[Annotated[StrictInt, Field(ge=0)], ...], Field(min_length=1)]

    @model_validator(mode="after")
    def _window(self):
        return _covariate_window(self)


def _covariate_window(covariate):
    _check_window(covariate.window, "window")
    if covariate.window[1] > 0:
        raise ValueError(
            "window must end on or before the index day (0); a covariate seen after index "
            "would look into the time at risk"
        )
    return covariate


Covariate = Annotated[
    AgeCovariate | DemographicCovariate | PresenceCovariate | MeasurementCovariate,
    Field(discriminator="kind"),
]


class Cohort(_Model):
    cdm_versions: Annotated[tuple[str, ...], Field(min_length=1)] = ("5.3", "5.4")
    target: Target
    outcome: Outcome | None = None  # a binary study's
    survival: SurvivalOutcome | None = None  # a survival study's
    covariates: Annotated[dict[str, Covariate], Field(min_length=1)]

    @model_validator(mode="after")
    def _names(self):
        if self.outcome is None and self.survival is None:
            raise ValueError(
                "needs an outcome: [cohort.outcome] for a binary study, [cohort.survival] for "
                'task = "survival"'
            )
        if self.outcome is not None and self.survival is not None:
            raise ValueError(
                "declares both [cohort.outcome] and [cohort.survival]; keep the one of the "
                "study's task"
            )
        for name in self.covariates:
            if not _NAME.match(name):
                raise ValueError(f"covariate name {name!r} must be letters, digits and underscores")
        for version in self.cdm_versions:
            if not re.fullmatch(r"\d+\.\d+", version):
                raise ValueError(f'cdm-versions: {version!r} is not MAJOR.MINOR, e.g. "5.4"')
        return self

    def concept_sets(self) -> dict[str, ConceptSet]:
        """Every concept set, by where the spec names it."""
        sets: dict[str, ConceptSet] = {"target": self.target}
        if self.outcome is not None:
            sets["outcome"] = self.outcome
        if self.survival is not None and self.survival.domain != DEATH:
            sets["survival"] = self.survival
        for name, covariate in self.covariates.items():
            if isinstance(covariate, ConceptSet):
                sets[f"covariates.{name}"] = covariate
        return sets

    def to_toml(self) -> str:
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return tomli_w.dumps({"cohort": data})


def parse_cohort(raw: Any, source: str) -> Cohort:
    """Validate the ``[cohort]`` table; a ``SpecError`` names the first key at fault."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: [cohort] must be a table")
    try:
        return Cohort.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _location(error["loc"])
        message = _MESSAGES.get(error["type"], error["msg"]).removeprefix("Value error, ")
        raise SpecError(f"{source}: [cohort] {where + ': ' if where else ''}{message}") from None


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required",
    "union_tag_not_found": "needs a kind: one of "
    + ", ".join(("age", *DEMOGRAPHICS, *PRESENCE, "measurement")),
    "union_tag_invalid": "kind must be one of "
    + ", ".join(("age", *DEMOGRAPHICS, *PRESENCE, "measurement")),
}


def _location(loc: tuple) -> str:
    """``('covariates', 'aspirin', 'drug', 'window', 0)`` -> ``covariates.aspirin.window[0]``:
    the union's tag is not a key the user wrote."""
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            continue
        tag = i == 2 and loc[0] == "covariates"
        if tag and not isinstance(item, int):
            continue
        parts.append(str(item))
    return ".".join(parts)


def check_cohort_columns(spec: StudySpec, source: str) -> None:
    """The study's columns and the cohort's must agree: the outcome is the task's (the label of
    a binary study, time and event of a survival one), every feature and group column is a
    covariate of a fitting kind, and every covariate is used."""
    cohort, study, features = spec.cohort, spec.study, spec.features
    assert cohort is not None
    _check_task(spec, source)
    for column in study.outcome_columns:
        if column in cohort.covariates:
            raise SpecError(
                f"{source}: [cohort] covariates.{column}: the column {column!r} is the outcome; "
                "a covariate cannot have its name"
            )
    if study.split:
        raise SpecError(
            f"{source}: [study] split: a cohort has no split column; leave it out (the site "
            "fixes its own partition)"
        )
    used = set(features.columns) | set(study.groups) | ({study.consent} - {None})
    for column in sorted(used):
        if column not in cohort.covariates:
            raise SpecError(
                f"{source}: [cohort] covariates: column {column!r} of the study is not produced "
                f"by the cohort; add [cohort.covariates.{column}]"
            )
    for name, covariate in cohort.covariates.items():
        if name not in used:
            raise SpecError(
                f"{source}: [cohort] covariates.{name}: not a feature, group or consent column "
                "of the study; declare it in [features] or remove it"
            )
        _check_kind(name, covariate, spec, source)


def _check_task(spec: StudySpec, source: str) -> None:
    """A binary study's outcome is a label in a window, a survival study's a time to event:
    the cohort declares the one of the study's task."""
    cohort = spec.cohort
    assert cohort is not None
    if spec.study.task == "survival" and cohort.outcome is not None:
        raise SpecError(
            f"{source}: [cohort] outcome: a survival study's outcome is a time to event; "
            "declare it as [cohort.survival] (domain, concepts, window)"
        )
    if spec.study.task == "binary" and cohort.survival is not None:
        raise SpecError(
            f"{source}: [cohort] survival: a binary study's outcome is [cohort.outcome]; "
            'for a time to event set [study] task = "survival"'
        )


def _check_kind(name: str, covariate, spec: StudySpec, source: str) -> None:
    features = spec.features
    where = f"{source}: [cohort] covariates.{name}"
    numeric_kind = isinstance(covariate, AgeCovariate | MeasurementCovariate)
    if numeric_kind and name in features.categorical:
        raise SpecError(f"{where}: a {covariate.kind} is numeric; list it in [features] numeric")
    if isinstance(covariate, DemographicCovariate) and name in features.numeric:
        raise SpecError(
            f"{where}: {covariate.kind} is categorical; declare its concept ids as levels in "
            f"[features] categorical.{name}"
        )
    levels = features.categorical.get(name) or spec.study.group_levels.get(name) or ()
    if isinstance(covariate, DemographicCovariate):
        bad = [v for v in levels if v != OTHER and not v.isdigit()]
        if bad:
            raise SpecError(
                f"{where}: level {bad[0]!r} is not a concept id (or {OTHER!r}, for every "
                "concept id not declared)"
            )
    if isinstance(covariate, PresenceCovariate) and not set(levels) <= {"0", "1"}:
        raise SpecError(f"{where}: a {covariate.kind} presence is 0 or 1; its levels must be")
    if name == spec.study.consent and not isinstance(covariate, PresenceCovariate):
        raise SpecError(
            f"{where}: the consent column must be the presence of a consent concept "
            '(kind = "observation")'
        )
