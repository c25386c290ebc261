"""The epsilons a plan may target and the deltas a site's size allows, checked where a spec, a
command or a node meets them (light: no accountant is imported to check a number)."""

from __future__ import annotations

import math

# Above 100 a guarantee means nothing (e^100) and the PRV accountant's domain outgrows memory
# (1e9: 41 TiB); below 0.01 a typical plan needs more noise than the accountants search
# (``privacy.accounting``). Outside the range, say so before anything runs.
EPSILON_RANGE = (0.01, 100.0)


def epsilon_range_error(epsilon: float) -> str | None:
    """Why ``epsilon`` cannot be a target, or None."""
    low, high = EPSILON_RANGE
    if math.isnan(epsilon):
        return "nan is not a number"
    if not math.isfinite(epsilon) or epsilon > high:
        return (
            f"{epsilon:g} is above {high:g}, where a DP guarantee means nothing; "
            "to train without DP, say so (enabled = false, --no-dp)"
        )
    if epsilon < low:
        return f"{epsilon:g} is below {low:g}, which no noise level reaches in a useful plan"
    return None


def delta_too_weak(delta: float, records: int) -> bool:
    """Whether ``delta`` is no guarantee for ``records`` records: at delta >= 1/records a
    mechanism may release a record outright with that probability and still meet it."""
    return delta * records >= 1
