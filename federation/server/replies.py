"""The wire contract of the sites' replies, checked in one place: each check says why a reply
breaks it (the site is then dropped), or returns None. What a well-formed reply's numbers mean
for the model is checked elsewhere (``validation`` for the weights)."""

from __future__ import annotations

import math
from typing import Any

from flwr.app import ArrayRecord, RecordDict

from federation.wire import protocol as p
from privacy.bounds import N_BINS


def is_positive_count(value: Any) -> bool:
    """A released record count: a whole number of at least one (a bool is not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def setup_problem(metrics: Any, columns: int, estimated: int) -> str | None:
    """Why a setup reply breaks the wire contract, or None (``columns``: the pooled columns
    with declared bounds, ``estimated``: those whose bounds are estimated)."""
    if not is_positive_count(metrics.get(p.N_TRAIN)):
        return "n-train must be a positive whole number"
    histograms = metrics.get(p.BOUNDS_HISTOGRAMS)
    if histograms is not None:
        if not _finite_list(histograms, estimated * N_BINS):
            return f"the bounds histograms must be {estimated * N_BINS} finite numbers"
        if not _positive(metrics.get(p.BOUNDS_NOISE)):
            return "the bounds histograms need their positive noise multiplier"
    if any(k in metrics for k in (p.SUM, p.SUM_SQUARES, p.COUNT)):
        return sums_problem(metrics, columns)
    return None


def sums_problem(metrics: Any, columns: int) -> str | None:
    """Why a reply's standardization sums break the wire contract, or None."""
    sums = [metrics.get(k) for k in (p.SUM, p.SUM_SQUARES, p.COUNT)]
    if not all(_finite_list(s, columns) for s in sums):
        return f"the standardization sums must be {columns} finite numbers each"
    noise = metrics.get(p.STANDARDIZATION_NOISE)
    if noise is not None and not _positive(noise):
        return "the standardization noise multiplier must be positive"
    return None


def update_problem(content: RecordDict, dp: bool) -> str | None:
    """Why a train reply breaks the wire contract, or None. The weights themselves are checked
    against the model and the other sites in ``validation``."""
    if set(content.keys()) != {p.ARRAYS, p.METRICS}:
        return f"unexpected records {sorted(content.keys())}"
    arrays, metrics = content[p.ARRAYS], content[p.METRICS]
    if not isinstance(arrays, ArrayRecord):
        return "the weights are not an ArrayRecord"
    expected_metrics = set(p.TRAIN_METRICS) if dp else {p.NUM_EXAMPLES}
    if set(metrics.keys()) != expected_metrics:
        return f"metrics {sorted(metrics.keys())} are not the whitelist {sorted(expected_metrics)}"
    if int(metrics[p.NUM_EXAMPLES]) < 1:
        return "num-examples must be positive"
    return None


def _finite_list(value: Any, length: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == length
        and all(isinstance(v, float | int) and math.isfinite(v) for v in value)
    )


def _positive(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and 0 < value < math.inf
