"""The DP evaluation release of a survival model: what a site says about a model's risk scores
and its test partition's follow-up.

Shared by the site (which computes and noises it, ``client.survival_evaluation``) and the
aggregator (which pools and reads it, ``server.survival_evaluation``), so both derive the same
cells and bins from the study spec and the model alone. Nothing here depends on data.

One evaluation of a survival model is two Gaussian releases on the site's test partition, each
admitted by the site's ledger before it is computed, as the binary evaluation's are
(``federation.wire.evaluation``).

**Release 1, histograms** (message ``evaluate``). For every cell of the binary release's layout
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

Every pooled metric but Harrell's C-index (Uno's C-index, the time-dependent AUC and the Brier
score at the horizons, calibration against Kaplan-Meier) is post-processing of the summed
histograms (``server.survival_metrics``); the predicted survival of a score bin follows from
the model's baseline hazards, which the aggregator holds.

**Release 2, concordance** (message ``evaluate.ranks``), for the pooled cell and the group levels
(``Layout.rank_cells``). Harrell's C-index is ``c + T / pairs``, with ``T`` the sum over comparable
pairs (an event; a record of a later interval, or half the time one of its own) of ``[event's score
higher] - c``. ``T`` is bilinear in the records, so with ``Q`` the pooled histograms of release 1
(spread evenly within each score bin) and ``c`` their own C-index (so ``T(Q) = 0``), ``T = T(Q, P) +
T(P, Q) + T(P - Q)``: the first two terms are one sum over the records ``P`` of a function the
aggregator sends, and only the product of the histograms' errors is left (second order, as in the
binary AUROC). The request, per time interval, gives two cumulative shares of ``Q``'s records at the
score bins' edges (``score_grid``): the partners a record's event is compared with (records of later
intervals, half its own interval's), and the earlier events a record is a partner of (events of
earlier intervals, half its own interval's). Each record adds ``X - c Y`` to the cell's one sum:
``Y`` its comparable pairs' share (the partners if it is an event, plus the earlier events), ``X``
those it is concordant with (partners with lower scores, earlier events with higher ones), so ``0 <=
X <= Y <= 1`` for a request read from non-negative counts.

Sensitivity (add/remove one record): a record lies in exactly one cell of each table (the pooled
table, each group column, each intersection); there it adds 1 to exactly one entry of the
histogram (its status, its interval, its score bin: the edges do not depend on the data), 1 to
the records and 1 to the events if it is one. Each table's statistics are weighted by the square
root of their share of the release (``table_shares`` x ``STAT_SHARES``, each adding to 1), so
the weighted vector moves by at most ``sqrt(sum over tables of share x (0.9 + 0.05 + 0.05)) = 1``
in L2.

In release 2, a record adds its term, clipped to ``max(c, 1 - c)`` in absolute value (the
bound that ``0 <= X <= Y <= 1`` gives, enforced whatever the request holds), to its cell's one
sum per table; dividing each cell by that bound and weighting by its table's share
(``Layout.table_shares(ranks=True)``) gives L2 sensitivity 1 (the request is fixed by release 1,
so a record changes its own term alone). Each release is therefore one Gaussian mechanism of
noise multiplier ``z`` (sample rate 1) per evaluation, the two split as the binary releases are
(``evaluation_noise``), composed in the site's accountant with everything else it releases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from federation.wire.encoding import categorical_inputs
from federation.wire.evaluation import (
    CENTER,
    EVAL_PREFIX,
    GROUP,
    INTERSECTION,
    POOLED_TABLE,
    RANKS_PREFIX,
    Cell,
    Layout,
    Table,
    evaluation_noise,
    key,
    rank_fields,
)
from federation.wire.spec import StudySpec

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
# Release 2's request, per interval: the records of later intervals and of its own, the events
# of earlier intervals and of its own.
LATER, WITHIN, EARLIER_EVENTS, WITHIN_EVENTS = "later", "within", "earlier_events", "within_events"
REQUEST_SHARES = (LATER, WITHIN, EARLIER_EVENTS, WITHIN_EVENTS)
CONCORDANCE = "concordance"  # release 2's one sum per cell
# The histogram carries every metric; the records and events only decide publication and the
# reported counts, so they take little.
STAT_SHARES = {HISTOGRAM: 0.9, RECORDS: 0.05, EVENTS: 0.05}
# Of an evaluation's rho, release 1's; release 2 (Harrell's C-index) gets the rest. On the synthetic
# cohorts of benchmarks/survival_evaluation.py at epsilon 3, release 1 alone read the C-index
# with an RMSE of 0.010 at 930 test events (5 sites) and 0.033 at 290 (3 sites); with release 2
# at shares 0.2, 0.35, 0.5 and 0.7 of the rho, 0.005, 0.006, 0.006, 0.008 and 0.015-0.023, 0.015,
# 0.015, 0.020. Every other metric reads release 1, whose noise grows as 1/sqrt(share): half
# keeps most of the C-index's gain at 1.4 times the noise on the rest.
HISTOGRAM_SHARE = 0.5
# Of release 1, the group columns' and the intersections' parts (split equally among the
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
    z_grid, grid = score_grid(z), score_grid(edges)  # both with the tails closed alike
    low, high, edge_low, edge_high = z_grid[:-1], z_grid[1:], grid[:-1], grid[1:]
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


def score_grid(edges: np.ndarray) -> np.ndarray:
    """The score bins' edges with the two open tails closed one neighbouring spacing out
    (``N_SCORE_BINS + 1`` values): where release 2 spreads a bin's records evenly."""
    edges = np.asarray(edges, dtype=float)
    return np.concatenate([[2 * edges[0] - edges[1]], edges, [2 * edges[-1] - edges[-2]]])


@dataclass(frozen=True)
class ConcordanceRequest:
    """What release 2 asks of one cell: per time interval, the cumulative shares at
    ``score_grid`` of the records of later intervals, of the interval's own records, of the
    events of earlier intervals and of the interval's own events (each ``intervals x
    (N_SCORE_BINS + 1)``, flattened by interval), and the C-index ``center`` they were read
    with."""

    later: tuple[float, ...]
    within: tuple[float, ...]
    earlier_events: tuple[float, ...]
    within_events: tuple[float, ...]
    center: float

    def check(self, intervals: int) -> None:
        """ValueError unless this is a request a site may answer (its terms are clipped to the
        center's bound anyway; these are what the sum is read with)."""
        for name in REQUEST_SHARES:
            values = np.asarray(getattr(self, name), dtype=float)
            if values.shape != (intervals * (N_SCORE_BINS + 1),):
                raise ValueError(f"a concordance request needs {intervals} x {N_SCORE_BINS + 1}"
                                 f" {name} shares")  # fmt: skip
            if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values > 1):
                raise ValueError("a concordance share must lie in [0, 1]")
        if not (math.isfinite(self.center) and 0.0 <= self.center <= 1.0):
            raise ValueError("a rank center must lie in [0, 1]")

    def shares(self, intervals: int) -> dict[str, np.ndarray]:
        """Each of ``REQUEST_SHARES``, ``(intervals, N_SCORE_BINS + 1)``."""
        shape = (intervals, N_SCORE_BINS + 1)
        return {name: np.reshape(getattr(self, name), shape) for name in REQUEST_SHARES}


def share_after(time: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    """The share of each time's own interval that lies after it (its interval's records spread
    evenly over it); 1/2 in the open interval after the last cut."""
    time = np.asarray(time, dtype=float)
    interval = time_bins(time, cuts)
    ends = np.asarray(cuts, dtype=float)
    starts = np.concatenate([[0.0], ends])
    inner = interval < len(cuts)
    k = np.minimum(interval, len(cuts) - 1)
    after = np.clip((ends[k] - time) / (ends[k] - starts[k]), 0.0, 1.0)
    return np.where(inner, after, 0.5)


def concordance_requests_to_config(requests: Mapping[Cell, ConcordanceRequest]) -> dict:
    config: dict[str, object] = {}
    for cell, request in requests.items():
        for name in REQUEST_SHARES:
            config[key(RANKS_PREFIX, cell, name)] = [float(v) for v in getattr(request, name)]
        config[key(RANKS_PREFIX, cell, CENTER)] = float(request.center)
    return config


def concordance_requests_from_config(
    config: Mapping[str, object], allowed: list[Cell], intervals: int
) -> dict[Cell, ConcordanceRequest]:
    """The requests in a survival ``evaluate.ranks`` config: only declared cells, each complete
    and bounded; ValueError otherwise."""
    requests = {}
    for cell, values in rank_fields(config, allowed, REQUEST_SHARES).items():
        request = ConcordanceRequest(*(values[name] for name in REQUEST_SHARES), values[CENTER])
        request.check(intervals)
        requests[cell] = request
    return requests


def survival_evaluation_noise(
    epsilon: float, delta: float, accountant: str, evaluations: int
) -> tuple[float, float]:
    """Noise multipliers (release 1, release 2) of each evaluation such that all
    ``evaluations`` of a run, two releases each, compose to at most ``epsilon`` at ``delta`` on
    the test partition (``HISTOGRAM_SHARE`` of the rho to release 1)."""
    return evaluation_noise(epsilon, delta, accountant, evaluations, HISTOGRAM_SHARE)
