"""The disclosure guard: the last check every outgoing message passes at the site.

The producers (the DP releases, the public training-record count) are built to leave; the guard
does not trust them. It checks the message as it will leave: only the record names the message
kind allows, only the model's declared arrays with their declared shapes, only whitelisted keys,
and no count from 1 to ``min_cell_count``. A message that fails is never sent; the site sends a
``failed`` status with the guard's reason (which names keys, never values) instead.

A message is described as plain data, so this module needs nothing from Flower:
``{record_name: (kind, {key: value})}`` with kind ``arrays`` (values are shapes), ``metrics`` or
``config``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from privacy.disclosure import is_disclosive


class DisclosureError(Exception):
    """An outgoing message would disclose more than the policy allows."""


@dataclass(frozen=True)
class Whitelist:
    """What one kind of message may carry: record names and their kinds, and the keys (as
    regular expressions, matched in full) of each record; ``counts`` are keys holding counts."""

    records: Mapping[str, str]
    keys: Mapping[str, tuple[str, ...]]
    counts: tuple[str, ...] = ()

    def allows(self, record: str, key: str) -> bool:
        return any(re.fullmatch(pattern, key) for pattern in self.keys.get(record, ()))

    def is_count(self, key: str) -> bool:
        return any(re.fullmatch(pattern, key) for pattern in self.counts)


def check_message(
    content: Mapping[str, tuple[str, Mapping[str, Any]]],
    whitelist: Whitelist,
    min_cell_count: int,
    declared_arrays: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Raise DisclosureError naming the first key that may not leave the site."""
    for name, (kind, values) in content.items():
        if whitelist.records.get(name) != kind:
            raise DisclosureError(f"record {name!r} ({kind}) is not allowed in this message")
        if kind == "arrays":
            _check_arrays(values, declared_arrays)
            continue
        for key, value in values.items():
            if not whitelist.allows(name, key):
                raise DisclosureError(f"key {name}/{key} is not on the whitelist")
            if whitelist.is_count(key) and _has_small_count(value, min_cell_count):
                raise DisclosureError(f"key {name}/{key} holds a count from 1 to {min_cell_count}")


def _check_arrays(
    shapes: Mapping[str, Any], declared: Mapping[str, tuple[int, ...]] | None
) -> None:
    if declared is None:
        raise DisclosureError("arrays in a message that may not carry any")
    if list(shapes) != list(declared):
        raise DisclosureError("the arrays are not exactly the model's declared layers")
    for key, shape in shapes.items():
        if tuple(shape) != tuple(declared[key]):
            raise DisclosureError(f"array {key} has shape {tuple(shape)}, declared {declared[key]}")


def _has_small_count(value: Any, min_cell_count: int) -> bool:
    """A count is an integral number; a noisy (non-integral) float is not a count any more."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, Real):
            continue
        integral = math.isfinite(item) and float(item).is_integer()
        if integral and is_disclosive(int(item), min_cell_count):
            return True
    return False
