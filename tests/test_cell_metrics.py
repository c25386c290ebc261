"""The server's metrics of a cell are the same estimator as recorded before they were batched:
for a spread of realistic cells (``tests/data/record_cell_metrics.py`` recorded each cell's
release and ``cell_metrics`` of it), the same release and seed give the same numbers, intervals,
curves and reasons, to rounding."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federation.server import evaluation as ev
from federation.wire.evaluation import RankRequest

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "cell_metrics_reference.json").read_text()
)["cases"]
TOLERANCE = 1e-9


def decode(release: dict[str, Any]) -> ev.CellRelease:
    ranks = release["ranks"]
    return ev.CellRelease(
        np.array(release["hist_pos"]), np.array(release["hist_neg"]), release["records"],
        release["events"], release["residuals"], release["squared_errors"],
        release["variance"],
        None if ranks is None else ev.RankSums(
            ranks["pos"], ranks["neg"], ranks["variance"],
            RankRequest(tuple(ranks["cdf_pos"]), tuple(ranks["cdf_neg"]), ranks["center"]),
        ),
        release["sites"],
    )  # fmt: skip


def differences(ours: Any, recorded: Any, where: str = "") -> list[str]:
    """Where two JSON-like values differ: numbers by more than ``TOLERANCE`` (absolute and
    relative), anything else at all."""
    if isinstance(recorded, dict):
        if not isinstance(ours, dict) or set(ours) != set(recorded):
            return [f"{where}: keys {sorted(ours)} != {sorted(recorded)}"]
        return [d for k in recorded for d in differences(ours[k], recorded[k], f"{where}.{k}")]
    if isinstance(recorded, list):
        if not isinstance(ours, list) or len(ours) != len(recorded):
            return [f"{where}: {ours!r} != {recorded!r}"]
        return [
            d
            for i, (a, b) in enumerate(zip(ours, recorded, strict=True))
            for d in differences(a, b, f"{where}[{i}]")
        ]
    if isinstance(recorded, float) and isinstance(ours, int | float):
        close = math.isclose(ours, recorded, rel_tol=TOLERANCE, abs_tol=TOLERANCE)
        return [] if close else [f"{where}: {ours!r} != {recorded!r}"]
    return [] if type(ours) is type(recorded) and ours == recorded else [
        f"{where}: {ours!r} != {recorded!r}"
    ]  # fmt: skip


@pytest.mark.parametrize("case", REFERENCE, ids=[case["label"] for case in REFERENCE])
def test_cell_metrics_are_the_recorded_estimator(case):
    ours = json.loads(json.dumps(ev.cell_metrics(decode(case["release"]), case["seed"])))
    assert differences(ours, case["metrics"]) == []


def test_the_comparison_can_tell_a_changed_estimator():
    """The reference is sharp: another seed of the same estimator moves the intervals."""
    case = REFERENCE[0]
    release = decode(case["release"])
    other_seed = json.loads(json.dumps(ev.cell_metrics(release, case["seed"] + 1)))
    assert any("_ci" in d or "roc_curve" in d for d in differences(other_seed, case["metrics"]))
