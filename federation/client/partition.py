"""The site's fixed train/test partition: decided at the site, the same in every run.

A record is a test record by the site's own split column, or by a keyed hash of its identity:
``HMAC-SHA256(site secret, identity) < test-fraction``. The secret is drawn once and kept in the
site's ledger; the identity is the site's record-id column when its policy names one, else the
record's whole row. Nothing the aggregator sends (a seed, a fraction, a split column in a spec)
can move a record between the partitions once the site has pinned its partition, which is what
lets the ledger count a participant's epsilon as the larger of the two partitions' budgets.

The definition (method, column or fraction, and which columns make the identity) is pinned by
the site's first run (``Ledger.pin_partition``); a file whose columns no longer make the same
identity is refused rather than partitioned differently.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from federation.errors import DataError
from federation.wire.spec import StudySpec
from privacy.policy import DEFAULT_TEST_FRACTION, SitePolicy

_UNIT_SEPARATOR = "\x1f"


def requested_definition(policy: SitePolicy, spec: StudySpec, columns: list[str]) -> dict[str, Any]:
    """What the site's first run pins: the policy's split column, else the spec's, else a keyed
    hash at the policy's (else the spec's) test fraction over the record-id column or the whole
    row (``columns``: the file's columns)."""
    split = policy.split_column or spec.study.split
    if split:
        return {"method": "column", "column": split}
    fraction = policy.test_fraction or spec.study.test_fraction or DEFAULT_TEST_FRACTION
    identity = [policy.record_id_column] if policy.record_id_column else sorted(columns)
    return {"method": "hash", "test_fraction": float(fraction), "identity": identity}


@dataclass(frozen=True)
class Partition:
    """A pinned definition and the site's secret: which records of a frame are test records."""

    definition: dict[str, Any]
    secret: bytes

    def test_rows(self, frame: pd.DataFrame, rows: pd.Series, source: str) -> np.ndarray:
        """A boolean per row of ``frame`` (text cells): True for a test record."""
        if self.definition["method"] == "column":
            return _split_column(frame, rows, self.definition["column"], source)
        identity = list(self.definition["identity"])
        if len(identity) == 1 and identity[0] in frame.columns:
            keys = frame[identity[0]]
        elif len(identity) == 1:  # a site file has more than one column: a record-id column
            raise DataError(
                f"{source}: the site's record-id column {identity[0]!r} is missing "
                "(record-id-column in the site policy)",
                "missing-column",
                identity[0],
            )
        elif sorted(frame.columns) == identity:
            # Column-wise, not row by row (a row-wise join took 72 s for 230,000 rows); the same
            # text, so partitions pinned before keep their records.
            texts = [frame[column].fillna("").astype(str) for column in identity]
            keys = texts[0].str.cat(texts[1:], sep=_UNIT_SEPARATOR)
        else:
            raise DataError(
                f"{source}: the file's columns no longer identify records as when the site "
                "pinned its partition; restore them or set record-id-column in the site policy "
                "(with a new ledger)",
                "partition-changed",
            )
        fraction = float(self.definition["test_fraction"])
        return np.array([self._unit(str(k)) < fraction for k in keys.fillna("")], dtype=bool)

    def _unit(self, identity: str) -> float:
        digest = hmac.new(self.secret, identity.encode("utf-8"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") / 2**64


def _split_column(frame: pd.DataFrame, rows: pd.Series, column: str, source: str) -> np.ndarray:
    from federation.client.data import first_rows

    if column not in frame.columns:
        raise DataError(
            f"{source}: the site's split column {column!r} is missing", "missing-column", column
        )
    text = frame[column].fillna("").astype(str).str.strip().str.lower()
    bad = ~text.isin(("train", "test"))
    if bad.any():
        raise DataError(
            f"{source}: split column {column!r} must be 'train' or 'test'; "
            f"{int(bad.sum())} rows are not ({first_rows(rows, bad.to_numpy())})",
            "bad-split",
            column,
        )
    return (text == "test").to_numpy()


def fresh_partition(
    spec: StudySpec, columns: list[str], policy: SitePolicy | None = None
) -> Partition:
    """The partition a site would pin at its first run, with a fresh secret: for a preview
    (``allfed site check`` without the node's ledger) and for callers that hold every record
    anyway (benchmarks, the privacy audit)."""
    definition = requested_definition(policy or SitePolicy(), spec, columns)
    return Partition(definition, secrets.token_bytes(32))
