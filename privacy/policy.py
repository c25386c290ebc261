"""A site's privacy policy: the privacy officer's rules, which win over any run's config.

The policy is a small TOML file owned by the site (never by the central team). A run that asks
for weaker privacy than the policy allows is refused before anything is computed; the site does
not silently join at its own stricter cap, because then the study's declared epsilon would no
longer describe every site and the central team could not plan the study's utility.

```toml
lifetime-epsilon = 8.0        # all runs together, composed by the accountant (hard stop)
max-epsilon-per-run = 3.0     # a run's target-epsilon may not exceed this
max-delta = 1e-5              # a run's delta may not exceed this
lifetime-delta = 1e-5         # the delta of the lifetime budget (default: max-delta, else 1e-5)
accountant = "prv"            # composes the lifetime budget: prv or rdp
min-cell-count = 20           # no count from 1 to this may leave the site
allowed-studies = ["cardiometabolic-risk"]   # absent: any study
allowed-models = ["logistic", "mlp"]          # absent: any model
require-dp = true             # the default, also for a node without a policy file
max-evaluation-epsilon-per-run = 3.0   # a run's evaluation (test partition) may not exceed this
                                       # (default: max-epsilon-per-run)
test-fraction = 0.3           # the share of records the site holds out for evaluation
split-column = "split"        # or: the site's own train/test column decides
record-id-column = "person_id"   # the column that identifies a record (stable partition)
```

The partition settings are read once, when the site's first run pins its partition in the
ledger; a later change is refused rather than applied (it would move records between the train
and test partitions, whose budgets the ledger keeps apart).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Lt
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails

from privacy.accounting import ACCOUNTANTS
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT
from privacy.refusal import Refusal

DEFAULT_LIFETIME_DELTA = 1e-5
DEFAULT_TEST_FRACTION = 0.3


class PolicyError(ValueError):
    """The policy file is missing or malformed; the message names the file and the key."""


def _column(name: str) -> str:
    if not name.strip():
        raise ValueError("an empty column name")
    return name


class SitePolicy(BaseModel):
    """What this site allows. ``None`` means no limit of that kind."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=lambda name: name.replace("_", "-"),
        validate_by_alias=True,
        validate_by_name=True,  # in code; a file is read by alias only (``parse_policy``)
        allow_inf_nan=False,
    )

    lifetime_epsilon: StrictFloat | None = Field(None, gt=0)
    max_epsilon_per_run: StrictFloat | None = Field(None, gt=0)
    max_delta: StrictFloat | None = Field(None, gt=0, lt=1)
    # Default: max-delta, else DEFAULT_LIFETIME_DELTA.
    lifetime_delta: StrictFloat = Field(DEFAULT_LIFETIME_DELTA, gt=0, lt=1)
    accountant: Literal[ACCOUNTANTS] = "prv"  # type: ignore[valid-type]
    min_cell_count: StrictInt = Field(DEFAULT_MIN_CELL_COUNT, ge=1)
    allowed_studies: tuple[StrictStr, ...] | None = None
    allowed_models: tuple[StrictStr, ...] | None = None
    require_dp: StrictBool = True
    max_evaluation_epsilon_per_run: StrictFloat | None = Field(None, gt=0)
    test_fraction: StrictFloat | None = Field(None, gt=0, lt=1)
    split_column: Annotated[StrictStr, AfterValidator(_column)] | None = None
    record_id_column: Annotated[StrictStr, AfterValidator(_column)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lifetime_delta_defaults_to_max_delta(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = {key.replace("_", "-"): value for key, value in data.items()}
        if given.get("max-delta") is not None and "lifetime-delta" not in given:
            return {**data, "lifetime-delta": given["max-delta"]}
        return data

    @property
    def evaluation_cap(self) -> float | None:
        """The cap on a run's test-partition epsilon (default: the training partition's)."""
        if self.max_evaluation_epsilon_per_run is not None:
            return self.max_evaluation_epsilon_per_run
        return self.max_epsilon_per_run

    def refusal(
        self,
        study: str,
        model: str | None,
        dp: bool,
        target_epsilon: float,
        delta: float,
        evaluation_epsilon: float | None = None,
    ) -> Refusal | None:
        """Why this site refuses a run with these settings, or None when it may join. A
        descriptive analysis trains no model (``model`` None) and has no evaluation."""
        if self.allowed_studies is not None and study not in self.allowed_studies:
            return Refusal("study-not-allowed", "allowed-studies", f"study {study!r}")
        if (
            model is not None
            and self.allowed_models is not None
            and model not in self.allowed_models
        ):
            return Refusal("model-not-allowed", "allowed-models", f"model {model!r}")
        if self.max_delta is not None and delta > self.max_delta:
            return Refusal(
                "delta-above-policy",
                "max-delta",
                f"delta {delta:g} exceeds the site policy's max-delta {self.max_delta:g}",
            )
        caps = [("max-epsilon-per-run", self.max_epsilon_per_run, target_epsilon if dp else None)]
        caps.append(("lifetime-epsilon", self.lifetime_epsilon, target_epsilon if dp else None))
        if evaluation_epsilon is not None:
            caps.append(("max-evaluation-epsilon-per-run", self.evaluation_cap, evaluation_epsilon))
            caps.append(("lifetime-epsilon", self.lifetime_epsilon, evaluation_epsilon))
        for name, cap, asked in caps:
            if cap is not None and asked is not None and asked > cap:
                return Refusal(
                    "epsilon-above-policy",
                    name,
                    f"epsilon {asked:g} exceeds the site policy's {name} {cap:g}",
                )
        if not dp and self.require_dp:
            return Refusal("dp-required", "require-dp", "a run without DP training")
        return None


def simulation_policy(dp: bool) -> SitePolicy:
    """The policy of a simulated site whose files the caller holds and that has no policy file:
    the default, except that a study without DP may run (the caller owns the data)."""
    return SitePolicy(require_dp=dp)


def load_policy(path: str | Path) -> SitePolicy:
    """Read and check a policy file; PolicyError names the file and the offending key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise PolicyError(f"{path}: cannot read the policy: {error}") from None
    return parse_policy(raw, str(path))


def parse_policy(raw: dict[str, Any], source: str = "policy") -> SitePolicy:
    """A SitePolicy from parsed TOML; unknown keys and wrong types are errors."""
    try:
        return SitePolicy.model_validate(raw, by_name=False)  # a file's keys are kebab case
    except ValidationError as exc:
        raise PolicyError(f"{source}: {_describe(exc.errors()[0])}") from None


def _describe(error: ErrorDetails) -> str:
    """``key problem`` for pydantic's error: what the key's type expects."""
    key = str(error["loc"][0])
    fields = {info.alias: info for info in SitePolicy.model_fields.values()}
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r}; expected {', '.join(sorted(fields))}"
    field = fields[key]
    kind = _declared_type(field.annotation)
    if get_origin(kind) is Literal:
        return f"{key} must be one of {', '.join(get_args(kind))}"
    if get_origin(kind) is tuple:
        return f"{key} must be a list of names"
    if kind is bool:
        return f"{key} must be true or false"
    if kind is str:
        return f"{key} must be a column name"
    if kind is int:
        low = next(m.ge for m in field.metadata if isinstance(m, Ge))
        return f"{key} must be a whole number of at least {low}"
    below = next((f" and below {m.lt:g}" for m in field.metadata if isinstance(m, Lt)), "")
    return f"{key} must be a positive number{below}, got {error['input']!r}"


def _declared_type(annotation: Any) -> Any:
    """``str`` for ``Annotated[str, ...] | None``: the type a key's value must have."""
    if get_origin(annotation) in (Union, UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation
