"""The DP evaluation release of a survival model: what a site says about a model's risk scores
and its test partition's follow-up.

Shared by the site (which computes and noises it, ``client.survival_evaluation``) and the
aggregator (which pools and reads it, ``server.survival_evaluation``), so both derive the same
cells and bins from the study spec and the model alone. Nothing here depends on data.

One evaluation of a survival model is one Gaussian release on the site's test partition,
admitted by the site's ledger before it is computed (message ``evaluate``; a survival study
plans no second, ``evaluate.ranks``, release). For every cell of the binary release's layout
(``federation.wire.evaluation.layout``: the pooled cell, every declared level of every group
column, every level of every intersection of two of them) it holds

- a 3-D histogram: records by status (censored in the interval, or an event in it), by time
  interval (the spec's hazard intervals ``(0, c_1], ..., (c_{K-1}, c_K]`` and ``(c_K, inf)``)
  and by risk-score bin (on the linear predictor, the model's ``s(x)``), flattened in that
  order;
- the cell's records and its events.

The score bins' edges (``score_edges``) are quantiles of the model's scores on a probe of
public inputs drawn from the spec alone (``probe_inputs``: standard normal numeric columns, as
the federation's standardization makes them, and categorical levels from a reference level to
uniform): a function of the message's model, the same at every site and at the aggregator, so
they carry nothing of any site's data.
Edges fixed in advance put a DP-trained model's narrow scores in two or three bins, where every
pair is a tie (1/2) and the C-index is pulled towards 0.5, and leave the other bins empty while
their noise still counts; bins that follow the model's own spread avoid both.

Every pooled metric (Harrell's and Uno's C-index, the time-dependent AUC and the Brier score
at the horizons, calibration against Kaplan-Meier) is post-processing of the summed
histograms (``server.survival_metrics``); the predicted survival of a score bin follows from
the model's baseline hazards, which the aggregator holds.

Sensitivity (add/remove one record): a record lies in exactly one cell of each table (the pooled
table, each group column, each intersection); there it adds 1 to exactly one entry of the
histogram (its status, its interval, its score bin: the edges do not depend on the data), 1 to
the records and 1 to the events if it is one. Each table's statistics are weighted by the square
root of their share of the release (``table_shares`` x ``STAT_SHARES``, each adding to 1), so
the weighted vector moves by at most ``sqrt(sum over tables of share x (0.9 + 0.05 + 0.05)) = 1``
in L2. The release is therefore one Gaussian mechanism of noise multiplier ``z`` (sample rate
1) per evaluation, composed in the site's accountant with everything else it releases.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

from federation.wire.encoding import categorical_inputs
from federation.wire.evaluation import (
    EVAL_PREFIX,
    GROUP,
    INTERSECTION,
    POOLED_TABLE,
    Cell,
    Layout,
    Table,
    key,
)
from federation.wire.spec import StudySpec
from privacy.accounting import calibrate_noise

# Risk-score bins on the linear predictor at quantiles of the model's probe scores, open tails
# below and above: 3% of the probe in each tail, equal shares between (open tails of 10% hold
# pairs far apart that the within-bin reading undercounts: with no noise the synthetic cohorts'
# C-index came 0.005-0.011 below the exact one on deciles, within 0.0012 on these). More bins
# cut the within-bin error but add noise (every bin's counts are noised): on the 3 synthetic
# sites of benchmarks/survival_evaluation.py at epsilon 3 (decile edges, ties at 1/2), 6, 8 and
# 10 bins gave about the same RMSE (0.023-0.034 over 30 draws), 10 the least bias.
N_SCORE_BINS = 10
PROBE_LEVELS = np.linspace(0.03, 0.97, N_SCORE_BINS - 1)
PROBE_RECORDS = 4096
PROBE_SEED = 20_211
CENSORED, EVENT = 0, 1

HISTOGRAM, RECORDS, EVENTS = "hist", "records", "events"
# The histogram carries every metric; the records and events only decide publication and the
# reported counts, so they take little.
STAT_SHARES = {HISTOGRAM: 0.9, RECORDS: 0.05, EVENTS: 0.05}
# Of the release, the group columns' and the intersections' parts (split equally among the
# columns of each kind); the pooled cell, the headline, takes the rest.
GROUPS_SHARE, INTERSECTIONS_SHARE = 0.15, 0.05


def probe_inputs(spec: StudySpec) -> np.ndarray:
    """Public model inputs of the spec's encoding (``client.features.encode_features``): numeric
    columns standard normal; categorical columns as the node codes them
    (``categorical_inputs``), each probe record at a column's first declared level with its own
    chance (uniform from 0 to 1) and at a uniformly drawn level otherwise, so the probe spans
    cohorts whose records mostly sit at one reference level (rare conditions) as well as those
    spread over every level."""
    rng = np.random.default_rng(PROBE_SEED)
    blocks = [rng.standard_normal((PROBE_RECORDS, len(spec.features.numeric)))]
    reference_chance = rng.uniform(0.0, 1.0, PROBE_RECORDS)
    for levels in spec.features.categorical.values():
        at_reference = rng.uniform(0.0, 1.0, PROBE_RECORDS) < reference_chance
        drawn = np.where(at_reference, 0, rng.integers(0, len(levels), PROBE_RECORDS))
        blocks.append(categorical_inputs(drawn, len(levels)))
    return np.hstack(blocks).astype(np.float32)


def linear_predictors(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's risk scores ``s(x)`` for any weights, also crafted ones (NaN scores become 0,
    never an error that would depend on the data)."""
    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(np.asarray(x, dtype=np.float32))).squeeze(-1).double()
    return torch.nan_to_num(scores, nan=0.0).numpy().astype(float)


def score_edges(spec: StudySpec, model: torch.nn.Module) -> np.ndarray:
    """The ``N_SCORE_BINS - 1`` inner edges of the score bins: the model's scores on
    ``probe_inputs`` at ``PROBE_LEVELS``; where those do not rise (a constant or diverged
    model), unit-wide bins around the probe's median, so the layout stays fixed."""
    probe = linear_predictors(model, probe_inputs(spec))
    edges = np.quantile(probe, PROBE_LEVELS)
    if np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 1e-9):
        return edges
    median = float(np.median(probe))
    centre = median if math.isfinite(median) else 0.0
    return centre + np.arange(N_SCORE_BINS - 1) - (N_SCORE_BINS - 2) / 2


def score_bins(score: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each linear predictor's score bin (non-finite scores land in the tails, NaN low)."""
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf)
    return np.searchsorted(edges, score, side="right").astype(np.int64)


def bin_scores(edges: np.ndarray) -> np.ndarray:
    """A representative score per bin: the mean of a normal distribution whose quantiles at
    ``PROBE_LEVELS`` are ``edges``, within the bin, read in each bin's own units (linear between
    its edges; the tails at the spacing of the bin next to them). A bin's centre would
    overstate the scores in the wide bins next to the tails."""
    z = norm.ppf(PROBE_LEVELS)
    density = norm.pdf(z)
    inner = (density[:-1] - density[1:]) / np.diff(PROBE_LEVELS)  # normal means per bin
    means = np.concatenate(
        [[-density[0] / PROBE_LEVELS[0]], inner, [density[-1] / (1 - PROBE_LEVELS[-1])]]
    )
    low = np.concatenate([[z[0] - (z[1] - z[0])], z])  # each bin's lower z (a tail: one step)
    high = np.concatenate([z, [z[-1] + (z[-1] - z[-2])]])
    edge_low = np.concatenate([[edges[0] - (edges[1] - edges[0])], edges])
    edge_high = np.concatenate([edges, [edges[-1] + (edges[-1] - edges[-2])]])
    return edge_low + (means - low) / (high - low) * (edge_high - edge_low)


def time_bins(time: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    """Each time's interval: k for ``(c_{k-1}, c_k]`` (time 0 in the first), ``len(cuts)`` after
    the last cut."""
    return np.searchsorted(np.asarray(cuts, dtype=float), time, side="left").astype(np.int64)


def histogram_shape(spec: StudySpec) -> tuple[int, int, int]:
    """(status, time interval, score bin) of one cell's histogram."""
    return 2, len(spec.study.intervals) + 1, N_SCORE_BINS


def histogram_keys(cells: list[Cell]) -> dict[str, tuple[Cell, str]]:
    """Every key of the release for ``cells``, with its cell and statistic."""
    return {
        key(EVAL_PREFIX, cell, statistic): (cell, statistic)
        for cell in cells
        for statistic in STAT_SHARES
    }


def table_shares(layout: Layout) -> dict[Table, float]:
    """How the release splits between its tables: ``GROUPS_SHARE`` and ``INTERSECTIONS_SHARE``
    equally among the columns of their kind, the rest (and a missing kind's share) to the
    pooled table."""
    by_kind: dict[str, list[Table]] = {}
    for table in layout.tables:
        by_kind.setdefault(table[0], []).append(table)
    shares = {GROUP: GROUPS_SHARE, INTERSECTION: INTERSECTIONS_SHARE}
    result = {POOLED_TABLE: 1.0 - sum(s for kind, s in shares.items() if kind in by_kind)}
    for kind, share in shares.items():
        for table in by_kind.get(kind, []):
            result[table] = share / len(by_kind[kind])
    return result


def statistic_sd(layout: Layout, table: Table, statistic: str, noise: float) -> float:
    """Noise SD of one entry of ``statistic`` in ``table`` (natural units)."""
    return noise / math.sqrt(table_shares(layout)[table] * STAT_SHARES[statistic])


def survival_evaluation_noise(
    epsilon: float, delta: float, accountant: str, evaluations: int
) -> float:
    """The noise multiplier of each evaluation such that all ``evaluations`` of a run compose to
    at most ``epsilon`` at ``delta`` on the test partition."""
    return calibrate_noise(epsilon, delta, 1.0, evaluations, accountant)
