"""Synthetic cohorts with scores, and their evaluation releases made as a run makes them: for
``tests/test_metrics.py`` and for ``tests/data/record_cell_metrics.py`` (which records the cells
``tests/test_cell_metrics.py`` holds the server's metrics to), so that both release alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from federation.client.evaluation import histogram_release, rank_release
from federation.server import evaluation as ev
from federation.wire.evaluation import GROUP, POOLED_TABLE, evaluation_noise, layout
from federation.wire.spec import parse_spec

SPEC = parse_spec(
    """
[study]
label = "y"
groups = ["sex", "area"]
group-levels = { area = ["north", "south"] }
[features]
numeric = ["x"]
categorical = { sex = ["f", "m"] }
""",
    source="spec",
)
LAYOUT = layout(SPEC)


def cohort(n: int, seed: int, shift: float = 0.0):
    """Labels from a logistic model and a noisy, slightly miscalibrated score, with groups."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = (rng.random(n) < expit(-1.5 + shift + 1.6 * x)).astype(np.int64)
    p = expit(-1.2 + 1.4 * x + rng.normal(scale=0.4, size=n))
    members = {
        POOLED_TABLE: np.full(n, "all", dtype=object),
        (GROUP, "sex"): rng.choice(np.array(["f", "m", "(missing)"], dtype=object), n),
        (GROUP, "area"): rng.choice(np.array(["north", "south", "(other)"], dtype=object), n),
    }
    members[("intersection", "sex x area")] = np.array(
        [
            f"{a} | {b}"
            for a, b in zip(members[(GROUP, "sex")], members[(GROUP, "area")], strict=True)
        ],
        dtype=object,
    )
    return y, p, members


@dataclass(frozen=True)
class Released:
    """The cells of one evaluation (cell key -> ``CellRelease``)."""

    sites: list[dict]  # each site's histograms
    ranked: list[dict]  # each site's histograms with its own rank sums
    pooled: dict  # the sites' pooled and reconciled, with all their rank sums


def release_cells(parts, epsilon: float) -> Released:
    """Both releases of every site (``parts``: its labels, scores and group members), the
    ranks asked for the pooled histograms' cells, as the server does at ``epsilon``."""
    noise1, noise2 = evaluation_noise(epsilon, 1e-5, "rdp", 1)
    sites = [
        ev.read_histograms(histogram_release(y, p, mem, LAYOUT, noise1), LAYOUT, noise1)
        for y, p, mem in parts
    ]
    pooled = ev.pool(sites)
    requests = {c: r for c in LAYOUT.rank_cells() if (r := ev.rank_request(pooled[c])) is not None}
    ranks = [
        ev.read_ranks(rank_release(y, p, mem, LAYOUT, requests, noise2), requests, LAYOUT, noise2)
        for y, p, mem in parts
    ]
    ranked = [ev.with_ranks(s, [r]) for s, r in zip(sites, ranks, strict=True)]
    return Released(sites, ranked, ev.reconcile(ev.with_ranks(pooled, ranks), LAYOUT))
