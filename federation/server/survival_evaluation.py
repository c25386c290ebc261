"""Survival metrics from the sites' DP evaluation releases, each with a 95% interval that covers
the DP noise as well as sampling, and n/a where that interval is too wide to mean anything.

The sites' releases (``federation.wire.survival_evaluation``) are pooled by summing; every
entry's noise variance is known from the layout and the noise multiplier, and the score bins'
edges from the model the aggregator sent (``score_edges``). The concordance metrics (Harrell's
and Uno's C-index, the time-dependent AUC) are bilinear in the counts, so they are read from the
noisy bins themselves with the noise's own product taken off (unbiased). The others need
non-negative counts: post-processing (free of privacy cost) makes each row of score bins (one
status, one interval) the isotonic fit of its noisy cumulative counts (``evaluation.histogram``:
non-negative bins without the upward bias of clipping each at 0), and the Kaplan-Meier based
metrics (``survival_metrics``) read that. Every interval comes from a parametric bootstrap:
Poisson sampling of the cleaned bins plus a fresh draw of the release's noise at its known SD,
post-processed alike (seeded: the same release always gives the same intervals), the percentile
and basic intervals joined (``evaluation.bootstrap_interval``).

Harrell's C-index of a cell that release 2 answered (the pooled cell and the group levels, when
every site that sent release 1 answered it; a site's own cells, when it did) is read from that
release instead (``ranked_cindex``): the aggregator asks for it with the cell's cleaned
histogram (``concordance_query``), and what is left of the histograms' error is of second
order.

The rules are the binary release's: a site, group or intersection level is published only when
its noisy records, events and non-events each exceed the dissemination threshold, and a metric
whose 95% interval is wider than ``MAX_CI_WIDTH`` is n/a, with the reason in ``na_reason``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from federation.server import survival_metrics as sm
from federation.server.evaluation import (
    BOOTSTRAP_DRAWS,
    CI_LEVEL,
    DEGENERATE_SHARE,
    MAX_CI_WIDTH,
    MIN_CALIBRATION_RECORDS,
    Interval,
    Metrics,
    bootstrap_interval,
    histogram,
    metric_tables,
)
from federation.wire.evaluation import EVAL_PREFIX, RANKS_PREFIX, Cell, Layout, key
from federation.wire.spec import StudySpec
from federation.wire.survival_evaluation import (
    CONCORDANCE,
    EVENTS,
    HISTOGRAM,
    RECORDS,
    STAT_SHARES,
    ConcordanceRequest,
    bin_scores,
    histogram_keys,
    histogram_shape,
    statistic_sd,
)

UNIT = (0.0, 1.0)
_Z = NormalDist().inv_cdf(0.5 + CI_LEVEL / 2)
UNDEFINED = "undefined (no events, or no comparable pairs left after the DP noise)"
# Where the noise's positive part in the cleaned histogram passes this share of the records,
# the metrics read from it are withheld (``noise_swamps_records``). Measured with
# benchmarks/survival_evaluation.py: Fed-TCGA-BRCA's 222 test records have a share of 0.6 at
# epsilon 8 (integrated Brier score 0.046 high, its interval covering the exact value in 85% of
# draws) and 1.3 to 6.6 at epsilon 3 and 1 (0.05-0.09 high, 60-80%); the synthetic cohort's
# 1,000 have 0.43-0.47 at epsilon 1 (0.0004 high, 95%).
MAX_NOISE_MASS_SHARE = 0.5
SWAMPED = "the DP noise outweighs the records in the histogram it is read from"


@dataclass
class SurvivalCell:
    """One cell's released statistics, summed over the sites that released it, with the noise
    variance of one entry of each statistic."""

    hist: np.ndarray  # (status, interval, score bin)
    records: float
    events: float
    variance: dict[str, float]
    ranks: ConcordanceSums | None = None
    sites: int = 1

    def __add__(self, other: SurvivalCell) -> SurvivalCell:
        return SurvivalCell(
            self.hist + other.hist,
            self.records + other.records,
            self.events + other.events,
            {k: v + other.variance[k] for k, v in self.variance.items()},
            None if self.ranks is None or other.ranks is None else self.ranks + other.ranks,
            self.sites + other.sites,
        )


@dataclass(frozen=True)
class ConcordanceQuery:
    """What release 2 asks of a cell, and the cleaned pooled histogram ``reference`` (``Q``)
    the aggregator read it from."""

    request: ConcordanceRequest
    reference: np.ndarray


@dataclass(frozen=True)
class ConcordanceSums:
    """A cell's release 2, summed over sites: the sum, its noise variance, and the query it
    answers."""

    total: float
    variance: float
    query: ConcordanceQuery

    def __add__(self, other: ConcordanceSums) -> ConcordanceSums:
        return ConcordanceSums(self.total + other.total, self.variance + other.variance, self.query)


def read_release(
    record: Mapping[str, Any], spec: StudySpec, layout: Layout, noise_multiplier: float
) -> dict[Cell, SurvivalCell]:
    """A site's release (its reply's metrics) as cells; ValueError unless it holds exactly the
    layout's keys, each finite (a histogram: the study's number of entries)."""
    expected = histogram_keys(layout.cells)
    present = {k for k in record if k.startswith(f"{EVAL_PREFIX}.")}
    if missing := sorted(set(expected) - present):
        raise ValueError(f"missing evaluation keys, e.g. {missing[0]}")
    if extra := sorted(present - set(expected)):
        raise ValueError(f"unexpected evaluation keys, e.g. {extra[0]}")
    shape = histogram_shape(spec)
    values: dict[Cell, dict[str, Any]] = {}
    for name, (cell, statistic) in expected.items():
        value = record[name]
        if statistic == HISTOGRAM:
            array = np.asarray(value, dtype=float) if isinstance(value, list) else None
            if array is None or array.size != math.prod(shape) or not np.isfinite(array).all():
                raise ValueError(f"{name} must be {math.prod(shape)} finite numbers")
            value = array.reshape(shape)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        elif not math.isfinite(value):
            raise ValueError(f"{name} must be finite")
        values.setdefault(cell, {})[statistic] = value
    return {
        cell: SurvivalCell(
            stats[HISTOGRAM],
            float(stats[RECORDS]),
            float(stats[EVENTS]),
            {s: statistic_sd(layout, cell[:2], s, noise_multiplier) ** 2 for s in STAT_SHARES},
        )
        for cell, stats in values.items()
    }


def clean(noisy: np.ndarray) -> np.ndarray:
    """Non-negative histograms from noisy ones: each row of score bins fitted isotonically."""
    return histogram(noisy)


def concordance_query(release: SurvivalCell) -> ConcordanceQuery | None:
    """What to ask of a cell in release 2: from its cleaned histogram ``Q``, per interval the
    cumulative shares of its records (of all of them, so the terms stay within their bound)
    in each of the request's parts (``survival_metrics.pair_parts``) at the score grid's
    points, and ``Q``'s own C-index as the center; None when ``Q`` has no comparable pairs."""
    reference = clean(release.hist)
    center = float(sm.even_cindex(reference))
    records = reference.sum()
    if math.isnan(center) or records <= 0:
        return None
    start = np.zeros((reference.shape[1], 1))
    shares = (
        np.clip(np.concatenate([start, np.cumsum(part, -1)], -1) / records, 0.0, 1.0)
        for part in sm.pair_parts(reference)
    )
    request = ConcordanceRequest(*(tuple(part.ravel().tolist()) for part in shares), center)
    return ConcordanceQuery(request, reference)


def read_concordance(
    record: Mapping[str, Any],
    queries: Mapping[Cell, ConcordanceQuery],
    layout: Layout,
    noise_multiplier: float,
) -> dict[Cell, ConcordanceSums]:
    """A site's release 2 per queried cell; ValueError unless it answers exactly the queries,
    each sum a finite number."""
    expected = {key(RANKS_PREFIX, cell, CONCORDANCE): cell for cell in queries}
    present = {k for k in record if k.startswith(f"{RANKS_PREFIX}.")}
    if present != set(expected):
        raise ValueError("the rank release does not answer exactly the requested cells")
    sums = {}
    for name, cell in expected.items():
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite")
        sd = layout.rank_sd(cell[:2], queries[cell].request.center, noise_multiplier)
        sums[cell] = ConcordanceSums(float(value), sd**2, queries[cell])
    return sums


@dataclass(frozen=True)
class Horizons:
    """What the metrics read from the study and the model: the hazard intervals' cuts, the
    horizons' positions among them, the score bins' edges and every score bin's predicted
    survival at every cut."""

    cuts: tuple[float, ...]
    horizons: tuple[float, ...]
    edges: np.ndarray  # the score bins' inner edges (``score_edges``)
    survival: np.ndarray  # (score bins, cuts)

    @classmethod
    def of(cls, spec: StudySpec, baseline: np.ndarray, edges: np.ndarray) -> Horizons:
        survival = sm.predicted_survival(bin_scores(edges), baseline)
        return cls(spec.study.intervals, spec.study.horizons, edges, survival)

    def index(self, horizon: float) -> int:
        return self.cuts.index(horizon)


def _point_and_draws(release: SurvivalCell, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The released histogram and ``BOOTSTRAP_DRAWS`` redraws of it (rows 1...) as released
    (noisy), and the same cleaned. A redraw is Poisson sampling of the cleaned bins plus a fresh
    draw of the noise."""
    hist = clean(release.hist)
    rng = np.random.default_rng(seed)
    sd = math.sqrt(release.variance[HISTOGRAM])
    noisy = rng.poisson(np.broadcast_to(hist, (BOOTSTRAP_DRAWS, *hist.shape))).astype(float)
    noisy += rng.normal(0.0, sd, noisy.shape)
    raw = np.concatenate([release.hist[None], noisy])
    return raw, clean(raw)


@dataclass
class _Interval(Interval):
    """A survival metric's interval: one without a value is undefined because the release's
    counts leave nothing to compare (no events, or none after the noise)."""

    def published(self) -> tuple[float | None, list[float] | None, str | None]:
        if self.value is None:
            return None, None, UNDEFINED
        return super().published()


def _interval(values: np.ndarray, limit: float = MAX_CI_WIDTH) -> Interval:
    """A metric's estimate (``values[0]``) and bootstrap interval (``values[1:]``) on [0, 1]."""
    value = None if math.isnan(values[0]) else float(values[0])
    interval = bootstrap_interval(value, values[1:], limit)
    return _Interval(interval.value, interval.ci, limit, UNIT)


def cell_metrics(release: SurvivalCell, horizons: Horizons, seed: int = 0) -> dict[str, Any]:
    """Every survival metric of one cell (pooled, a site, a group level), intervals covering
    noise and sampling; ``None`` for what is undefined or too uncertain, the reason in
    ``na_reason``."""
    # The concordance metrics are bilinear in the counts: read from the noisy bins (with their
    # noise's own product taken off), they are unbiased, where the cleaned bins' isotonic
    # pooling of sparse rows pulls them towards 0.5 (measured: benchmarks/tcga_brca.py). The
    # Kaplan-Meier based ones need non-negative counts: they read the cleaned bins.
    noisy, hists = _point_and_draws(release, seed)
    variance = release.variance[HISTOGRAM]
    last = horizons.index(horizons.horizons[-1])
    out = Metrics()
    out.values.update(
        n=round(max(release.records, 0.0)),
        n_se=round(math.sqrt(release.variance[RECORDS]), 1),
        n_events=round(max(release.events, 0.0)),
        n_events_se=round(math.sqrt(release.variance[EVENTS]), 1),
        uno_tau=horizons.horizons[-1],
    )
    swamped = noise_swamps_records(release)
    # Release 2 reads the C-index against the cleaned histogram, first order in its error only
    # while the histogram is mostly records (on Fed-TCGA-BRCA's 32 test events, where the noise
    # outweighs them, it read 0.15-0.34 low); the noisy bins' reading is unbiased, only wider.
    ranked = release.ranks is not None and not swamped
    if ranked:
        out.put("cindex", ranked_cindex(release, release.ranks, seed))
    else:
        out.put("cindex", _interval(sm.harrell_cindex(noisy, variance)))
    out.values["cindex_method"] = "rank release" if ranked else "binned histograms"
    out.put("uno_cindex", _interval(sm.uno_cindex(noisy, last, variance)))
    withheld = SWAMPED if swamped else None  # what is read from the cleaned bins
    out.put_or_withhold(
        "integrated_brier",
        _interval(sm.integrated_brier(hists, horizons.survival, horizons.cuts, last)),
        withheld,
    )
    out.values["calibration"] = []
    for horizon in horizons.horizons:
        index, at = horizons.index(horizon), f"{horizon:g}"
        out.put(f"auc_{at}", _interval(sm.time_auc(noisy, index)))
        observed, predicted = sm.observed_and_predicted(
            hists, horizons.survival, index, slice(None)
        )
        out.put_or_withhold(f"observed_risk_{at}", _interval(observed), withheld)
        shown = not (swamped or math.isnan(predicted[0]))
        out.values[f"predicted_risk_{at}"] = float(predicted[0]) if shown else None
        groups = [] if swamped else _calibration_groups(hists, horizons, index)
        out.values["calibration"].append({"horizon": horizon, "groups": groups})
    out.values["diagnostics"] = score_diagnostics(hists[0])
    return out.as_dict()


def ranked_cindex(release: SurvivalCell, sums: ConcordanceSums, seed: int) -> Interval:
    """Harrell's C-index from release 2 (``wire.survival_evaluation``): ``c + T / pairs``, with
    ``T`` the sites' sum (scaled back to counts: the request's shares are of ``Q``'s records)
    against ``Q``, the cell's share ``alpha`` of ``Q`` (1 for the cell the query was read from,
    a site's share for that site's cell), plus the second-order term ``T(H - alpha Q)`` read
    from the cell's own cleaned histogram ``H`` (0 for the queried cell); ``pairs`` are ``H``'s,
    less the half pair each event makes with itself there. The interval adds the sum's noise,
    the second-order term's error from release 1's noise (redrawn) and the sampling variance
    (Poisson redraws of ``H``)."""
    center, reference = sums.query.request.center, sums.query.reference
    own = clean(release.hist)
    scale = own.sum()  # the sum's shares are of Q's records; alpha Q has H's records
    alpha = scale / reference.sum()
    pairs = float(sm.comparable_pairs(own)) - own[1].sum() / 2
    if pairs <= 0:
        return _Interval(None, None)
    second = float(sm.excess_concordance(own - alpha * reference, center))
    excess = scale * sums.total + second
    value = center + excess / pairs
    rng = np.random.default_rng(seed)
    sd = math.sqrt(release.variance[HISTOGRAM])
    redrawn = clean(own + rng.normal(0.0, sd, (BOOTSTRAP_DRAWS, *own.shape)))
    errors = sm.excess_concordance(redrawn - alpha * reference, center) - second
    sampled = sm.even_cindex(rng.poisson(np.broadcast_to(own, (BOOTSTRAP_DRAWS, *own.shape))))
    variance = scale**2 * sums.variance + float(np.mean(errors**2))
    variance = variance / pairs**2 + float(np.nanvar(sampled))
    se = math.sqrt(variance)
    return _Interval(value, [value - _Z * se, value + _Z * se], MAX_CI_WIDTH, UNIT)


def noise_swamps_records(release: SurvivalCell) -> bool:
    """Whether the noise's positive part outweighs the records in the cleaned histogram: the
    expected mass ``cells x SD / sqrt(2 pi)`` a non-negative fit keeps from zero-mean noise,
    against ``MAX_NOISE_MASS_SHARE`` of the (noisy) records. The metrics read from the cleaned
    bins (the integrated Brier score, observed and predicted risk, calibration) are then
    biased beyond what their intervals hold, and so is release 2's C-index, read against them;
    the concordance metrics read from the noisy bins are not. Public numbers only: the layout,
    the noise and the released count."""
    mass = release.hist.size * math.sqrt(release.variance[HISTOGRAM]) / math.sqrt(2 * math.pi)
    return mass > MAX_NOISE_MASS_SHARE * max(release.records, 1.0)


def _calibration_groups(hists: np.ndarray, horizons: Horizons, index: int) -> list[dict]:
    """Observed (1 - Kaplan-Meier) vs mean predicted risk by the horizon in risk groups of
    adjacent score bins, merged until each holds more than ``MIN_CALIBRATION_RECORDS`` (noisy)
    records; a group's observed risk is n/a when its 95% interval is wider than
    ``MAX_CI_WIDTH``."""
    records = hists[0].sum((0, 1))
    groups, start = [], 0
    for end in range(1, len(records) + 1):
        if records[start:end].sum() > MIN_CALIBRATION_RECORDS:
            groups.append((start, end))
            start = end
    if not groups:
        return []
    groups[-1] = (groups[-1][0], len(records))
    rows = []
    for low, high in groups:
        observed, predicted = sm.observed_and_predicted(
            hists, horizons.survival, index, slice(low, high)
        )
        value, ci, _ = _interval(observed).published()
        rows.append(
            {
                "score_low": _edge(horizons.edges, low),
                "score_high": _edge(horizons.edges, high),
                "count": round(float(records[low:high].sum())),
                "mean_predicted": None if math.isnan(predicted[0]) else float(predicted[0]),
                "observed": value,
                "observed_ci": ci,
            }
        )
    return rows


def _edge(edges: np.ndarray, index: int) -> float | None:
    """The score at the lower edge of bin ``index`` (None at the open ends)."""
    if index == 0 or index > len(edges):
        return None
    return float(edges[index - 1])


def score_diagnostics(hist: np.ndarray) -> list[str]:
    """What makes the scores unusable, as findings: (nearly) everyone in one score bin, or in
    the two open tails (a diverged model)."""
    records = hist.sum((0, 1))
    total = records.sum()
    findings = []
    if total <= 0:
        return findings
    if records.max() / total >= DEGENERATE_SHARE:
        findings.append("the model gives (nearly) every record the same score")
    if (records[0] + records[-1]) / total >= DEGENERATE_SHARE:
        findings.append(
            "the risk scores fall beyond the model's probe range (the two open score bins)"
        )
    return findings


def survival_tables(
    sites: Mapping[str, Mapping[Cell, SurvivalCell]],
    pooled: Mapping[Cell, SurvivalCell],
    layout: Layout,
    horizons: Horizons,
) -> dict[str, Any]:
    """``summary.json``'s ``metrics`` of a survival run: pooled, per site, per group level and
    per intersection level; a level or site below the dissemination threshold is withheld with
    its reason."""
    return metric_tables(sites, pooled, layout, lambda release: cell_metrics(release, horizons))
