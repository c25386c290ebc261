"""Check every site's update before it reaches the Flower strategy.

A federation is run by different people on different machines: an update can come back with the
wrong layers, as NaN, or scaled a thousandfold (a broken node or a malicious one). Each update is
checked on its own (layers, shapes and dtypes against the global model, finite values) and then
against the others: the norm of its change from the global weights may be at most
``max_ratio`` times the median norm of the other sites' changes (a median is not moved by one bad
site, so the rule holds while fewer than half the sites misbehave). A rejected update is left out
of this round only; the round goes on with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

log = logging.getLogger("allfed.server")

DEFAULT_MAX_RATIO = 10.0


@dataclass(frozen=True)
class Verdict:
    """Which updates of a round may be aggregated, why the others may not, and every norm."""

    accepted: list[int]
    rejected: dict[int, str]
    norms: dict[int, float]


def check_arrays(arrays: ArrayRecord, global_arrays: ArrayRecord) -> str | None:
    """Why ``arrays`` cannot stand in for ``global_arrays`` (layers, shapes, dtypes, finite
    values), or None. Declared metadata is checked before any bytes are decoded."""
    if not isinstance(arrays, ArrayRecord):
        return "the weights are not an ArrayRecord"
    expected, found = list(global_arrays.keys()), list(arrays.keys())
    if found != expected:
        missing = [k for k in expected if k not in found]
        extra = [k for k in found if k not in expected]
        detail = f"missing {missing}" if missing else f"unexpected {extra}" if extra else "order"
        return f"the layers do not match the model's ({detail})"
    for key in expected:
        model, update = global_arrays[key], arrays[key]
        if tuple(update.shape) != tuple(model.shape) or update.dtype != model.dtype:
            return (
                f"layer {key} is {update.dtype}{list(update.shape)}, "
                f"the model's is {model.dtype}{list(model.shape)}"
            )
        try:
            values = update.numpy()
        except Exception as error:  # undecodable bytes: whatever numpy says, it is not an array
            return f"layer {key} cannot be decoded ({type(error).__name__})"
        if values.shape != tuple(model.shape) or values.dtype != np.dtype(model.dtype):
            return f"layer {key} holds data that does not match its declared shape and dtype"
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            return f"layer {key} has {bad} non-finite values (NaN or infinity)"
    return None


def update_norm(arrays: ArrayRecord, global_arrays: ArrayRecord) -> float:
    """L2 norm of the change from the global weights, over all layers (float64)."""
    squares = 0.0
    for key in global_arrays:
        delta = arrays[key].numpy().astype(np.float64) - global_arrays[key].numpy()
        squares += float(np.square(delta).sum())
    return float(np.sqrt(squares))


def norm_outliers(norms: Mapping[int, float], max_ratio: float) -> dict[int, str]:
    """Updates whose norm exceeds ``max_ratio`` times the median of the other updates' norms.

    With one update there is nothing to compare with; when the others barely moved (median 0)
    a ratio means nothing either, and the update passes.
    """
    if max_ratio <= 0 or len(norms) < 2:
        return {}
    outliers = {}
    for node, norm in norms.items():
        others = float(np.median([n for other, n in norms.items() if other != node]))
        if others > 0 and norm > max_ratio * others:
            outliers[node] = (
                f"update norm {norm:.3g} is {norm / others:.0f} times the median of the other "
                f"sites' ({others:.3g}); the limit is {max_ratio:g} times"
            )
    return outliers


def validate_updates(
    updates: Mapping[int, ArrayRecord],
    global_arrays: ArrayRecord,
    max_ratio: float = DEFAULT_MAX_RATIO,
    names: Mapping[int, str] | None = None,
) -> Verdict:
    """Check each node's update, then the well-formed ones' norms against each other."""
    names = names or {}
    rejected: dict[int, str] = {}
    norms: dict[int, float] = {}
    for node, arrays in updates.items():
        problem = check_arrays(arrays, global_arrays)
        if problem:
            rejected[node] = problem
        else:
            norms[node] = update_norm(arrays, global_arrays)
    rejected.update(norm_outliers(norms, max_ratio))
    for node, reason in rejected.items():
        log.warning("update of site %s rejected: %s", names.get(node, f"node-{node}"), reason)
    if norms:
        log.info(
            "update norms: %s",
            ", ".join(f"{names.get(n, f'node-{n}')} {v:.3g}" for n, v in sorted(norms.items())),
        )
    accepted = [node for node in updates if node not in rejected]
    return Verdict(accepted=accepted, rejected=rejected, norms=norms)
