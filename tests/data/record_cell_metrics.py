"""Records ``cell_metrics`` of a spread of realistic cells (inputs and outputs) as the reference
``tests/test_cell_metrics.py`` holds the server's metrics to: the releases are the project's own
(``client.evaluation`` on the synthetic cohorts of ``tests/evaluation_cohorts.py``, released
by its ``release_cells`` as ``tests/test_metrics.py`` releases them, pooled and reconciled as a
run does it). Run it only to record a deliberate change of the estimator:

    PYTHONPATH=$PWD:$PWD/tests python tests/data/record_cell_metrics.py
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
from evaluation_cohorts import cohort, release_cells

from federation.server import evaluation as ev
from federation.wire.evaluation import POOLED_CELL

OUT = Path(__file__).with_name("cell_metrics_reference.json")


def encode(release: ev.CellRelease) -> dict:
    ranks = release.ranks
    return {
        "hist_pos": release.hist_pos.tolist(),
        "hist_neg": release.hist_neg.tolist(),
        "records": release.records,
        "events": release.events,
        "residuals": release.residuals,
        "squared_errors": release.squared_errors,
        "variance": release.variance,
        "sites": release.sites,
        "ranks": None
        if ranks is None
        else {
            "pos": ranks.pos,
            "neg": ranks.neg,
            "variance": ranks.variance,
            "cdf_pos": list(ranks.request.cdf_pos),
            "cdf_neg": list(ranks.request.cdf_neg),
            "center": ranks.request.center,
        },
    }


def main() -> None:
    cases = []

    def add(label: str, release: ev.CellRelease, seed: int = 0) -> None:
        cases.append(
            {
                "label": label,
                "seed": seed,
                "release": encode(release),
                "metrics": ev.cell_metrics(release, seed),
            }
        )

    for epsilon, n, label in ((3.0, 1200, "large"), (1.0, 800, "medium"), (0.7, 300, "small")):
        parts = [cohort(n, 7000 + 10 * int(epsilon * 10) + k, shift=0.3 * k) for k in range(3)]
        released = release_cells(parts, epsilon)
        pooled = released.pooled
        add(f"{label}: pooled, rank release, epsilon {epsilon}", pooled[POOLED_CELL])
        add(f"{label}: a site, histograms only", released.sites[0][POOLED_CELL])
        add(f"{label}: a site, its rank sums", released.ranked[1][POOLED_CELL], seed=5)
        for cell in (("group", "sex", "f"), ("group", "area", "(other)"),
                     ("intersection", "sex x area", "m | north")):  # fmt: skip
            add(f"{label}: {' '.join(cell)}", pooled[cell])
    pos, neg = np.zeros(22), np.zeros(22)
    pos[10:16], neg[6:12] = [5, 9, 14, 20, 26, 30], [40, 38, 30, 22, 14, 9]
    variance = {k: 4.0 for k in ("hist_pos", "hist_neg", "records", "events",
                                 "residuals", "squared_errors")}  # fmt: skip
    add(
        "few bins, little noise",
        ev.CellRelease(pos, neg, 262.0, 104.0, 3.0, 40.0, variance),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    OUT.write_text(json.dumps({"recorded_at": commit, "cases": cases}, indent=1) + "\n")
    print(f"{len(cases)} cells written to {OUT}")


if __name__ == "__main__":
    main()
