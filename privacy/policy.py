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
require-dp = true
```
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from privacy.accounting import ACCOUNTANTS
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT

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
}


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

    def refusal(
        self, study: str, model: str | None, dp: bool, target_epsilon: float, delta: float
    ) -> str | None:
        """Why this site refuses a run with these settings, or None when it may join. A
        descriptive analysis trains no model (``model`` None)."""
        if self.allowed_studies is not None and study not in self.allowed_studies:
            return f"site policy does not allow study {study!r}"
        if (
            model is not None
            and self.allowed_models is not None
            and model not in self.allowed_models
        ):
            return f"site policy does not allow model {model!r}"
        if not dp:
            return "site policy requires differential privacy" if self.require_dp else None
        if self.max_epsilon_per_run is not None and target_epsilon > self.max_epsilon_per_run:
            return (
                f"target-epsilon {target_epsilon:g} exceeds the site policy's "
                f"max-epsilon-per-run {self.max_epsilon_per_run:g}"
            )
        if self.max_delta is not None and delta > self.max_delta:
            return f"delta {delta:g} exceeds the site policy's max-delta {self.max_delta:g}"
        if self.lifetime_epsilon is not None and target_epsilon > self.lifetime_epsilon:
            return (
                f"target-epsilon {target_epsilon:g} exceeds the site policy's "
                f"lifetime-epsilon {self.lifetime_epsilon:g}"
            )
        return None


def permissive_policy() -> SitePolicy:
    """A node without a policy file: only the dissemination rule (min-cell-count 20) applies."""
    return SitePolicy(require_dp=False)


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
    return SitePolicy(
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


def _names(raw: dict[str, Any], key: str, source: str) -> tuple[str, ...] | None:
    if key not in raw:
        return None
    value = raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{source}: {key} must be a list of names")
    return tuple(value)
