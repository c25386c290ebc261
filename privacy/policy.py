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

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import ACCOUNTANTS
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT
from privacy.refusal import Refusal

DEFAULT_LIFETIME_DELTA = 1e-5
_KEYS = {
    "lifetime-epsilon",
    "max-epsilon-per-run",
    "max-delta",
    "lifetime-delta",
    "accountant",
    "min-cell-count",
    "allowed-studies",
    "allowed-models",
    "require-dp",
    "max-evaluation-epsilon-per-run",
    "test-fraction",
    "split-column",
    "record-id-column",
}
DEFAULT_TEST_FRACTION = 0.3


class PolicyError(ValueError):
    """The policy file is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class SitePolicy:
    """What this site allows. ``None`` means no limit of that kind."""

    lifetime_epsilon: float | None = None
    max_epsilon_per_run: float | None = None
    max_delta: float | None = None
    lifetime_delta: float = DEFAULT_LIFETIME_DELTA
    accountant: str = "prv"
    min_cell_count: int = DEFAULT_MIN_CELL_COUNT
    allowed_studies: tuple[str, ...] | None = None
    allowed_models: tuple[str, ...] | None = None
    require_dp: bool = True
    max_evaluation_epsilon_per_run: float | None = None
    test_fraction: float | None = None
    split_column: str | None = None
    record_id_column: str | None = None

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
    if unknown := sorted(set(raw) - _KEYS):
        raise PolicyError(
            f"{source}: unknown key {unknown[0]!r}; expected {', '.join(sorted(_KEYS))}"
        )
    max_delta = _positive(raw, "max-delta", source, upper=1.0)
    accountant = raw.get("accountant", "prv")
    if accountant not in ACCOUNTANTS:
        raise PolicyError(f"{source}: accountant must be one of {', '.join(ACCOUNTANTS)}")
    min_cell = raw.get("min-cell-count", DEFAULT_MIN_CELL_COUNT)
    if not isinstance(min_cell, int) or isinstance(min_cell, bool) or min_cell < 1:
        raise PolicyError(f"{source}: min-cell-count must be a whole number of at least 1")
    require_dp = raw.get("require-dp", True)
    if not isinstance(require_dp, bool):
        raise PolicyError(f"{source}: require-dp must be true or false")
    test_fraction = _positive(raw, "test-fraction", source, upper=1.0)
    return SitePolicy(
        max_evaluation_epsilon_per_run=_positive(raw, "max-evaluation-epsilon-per-run", source),
        test_fraction=test_fraction,
        split_column=_name(raw, "split-column", source),
        record_id_column=_name(raw, "record-id-column", source),
        lifetime_epsilon=_positive(raw, "lifetime-epsilon", source),
        max_epsilon_per_run=_positive(raw, "max-epsilon-per-run", source),
        max_delta=max_delta,
        lifetime_delta=_positive(raw, "lifetime-delta", source, upper=1.0)
        or max_delta
        or DEFAULT_LIFETIME_DELTA,
        accountant=accountant,
        min_cell_count=min_cell,
        allowed_studies=_names(raw, "allowed-studies", source),
        allowed_models=_names(raw, "allowed-models", source),
        require_dp=require_dp,
    )


def _positive(raw: dict[str, Any], key: str, source: str, upper: float = math.inf) -> float | None:
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < upper:
        limit = f" and below {upper:g}" if math.isfinite(upper) else ""
        raise PolicyError(f"{source}: {key} must be a positive number{limit}, got {value!r}")
    return float(value)


def _name(raw: dict[str, Any], key: str, source: str) -> str | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{source}: {key} must be a column name")
    return value


def _names(raw: dict[str, Any], key: str, source: str) -> tuple[str, ...] | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{source}: {key} must be a list of names")
    return tuple(value)
