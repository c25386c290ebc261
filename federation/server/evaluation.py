"""Metrics from the sites' DP evaluation releases, each with a 95% interval that covers the DP
noise as well as sampling, and n/a where that interval is too wide to mean anything.

The sites' releases (``federation.wire.evaluation``) are pooled by summing; every statistic's noise
variance is known from the release's layout and noise multiplier. Post-processing (free of
privacy cost) then makes the noisy numbers consistent before anything is computed from them:

- a class histogram becomes the isotonic (non-decreasing) fit of its noisy cumulative counts,
  anchored at 0 and at the class's released count: non-negative bins without the upward bias
  that clipping each bin at 0 would give the many empty bins;
- the records and events of a group column's levels are reconciled with the pooled totals by
  weighted least squares (the variances are known), so levels add up to the total.

The AUROC of a cell with a rank release is read from it: the aggregator sends each site the
cell's two pooled class CDFs from release 1, each site sums the negatives' CDF over its positives
and the positives' CDF over its negatives, and the AUROC follows from the two means with an
error of second order in the CDFs' (``federation.wire.evaluation``). A site's own AUROC is read from
its sums against the pooled CDFs, plus the second-order term estimated from its own histograms.
The interval adds the two sums' noise, the error left in the second-order term (simulated from
release 1's noise) and DeLong's sampling variance. The other metrics' intervals come from a
parametric bootstrap over the release's noise and Poisson sampling of the post-processed bins
(seeded: the same release always gives the same intervals).

Rules stated in the README: a group or intersection level is published only when its noisy
records, events and non-events each exceed the site policy's dissemination threshold (20); a
metric whose 95% interval is wider than ``MAX_CI_WIDTH`` of its scale is n/a (``None``, with
the reason in ``na_reason``). "Withheld" is kept for what the dissemination rule holds back (a
level's ``withheld_reason``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import expit

from federation.server import metrics as m
from federation.wire.evaluation import (
    EVAL_PREFIX,
    EVENTS,
    HIST_NEG,
    HIST_POS,
    HISTOGRAMS,
    INNER_EDGES,
    INTERSECTION,
    N_BINS,
    POOLED_CELL,
    RANK_NEG,
    RANK_POS,
    RANKS_PREFIX,
    RECORDS,
    RESIDUALS,
    SQUARED_ERRORS,
    STAT_SHARES,
    THRESHOLD,
    THRESHOLD_BIN,
    Cell,
    Layout,
    RankRequest,
    bin_logits,
    histogram_keys,
    key,
)

CI_LEVEL = 0.95
_Z = NormalDist().inv_cdf(0.5 + CI_LEVEL / 2)
BOOTSTRAP_DRAWS = 200
MIN_PUBLISHED_COUNT = 20  # the dissemination rule, applied to published (noisy) counts
# A metric is n/a when its 95% interval is wider than this share of its scale: on [0, 1]
# for rates, AUROC and AUPRC; the scale of a calibration slope or intercept is 2 (0 to 2 for a
# slope around its ideal 1), of the E-statistics 1.
MAX_CI_WIDTH = 0.4
NOISE_FLOOR = 3.0  # noise SDs of a bin's records under which calibration ignores the bin
MIN_CALIBRATION_BINS = 5  # bins above the floor a calibration fit needs: fewer span too little
MIN_CALIBRATION_RECORDS = 50  # (noisy) records per group of bins on the calibration plot
DEGENERATE_SHARE = 0.9  # of the records in one bin (or the two saturated tails): a flag
_LOGITS = bin_logits()


@dataclass(frozen=True)
class RankSums:
    """A cell's release 2, summed over sites: the two sums, the noise variance of each, and the
    request they answer."""

    pos: float
    neg: float
    variance: float
    request: RankRequest

    def __add__(self, other: RankSums) -> RankSums:
        return RankSums(
            self.pos + other.pos, self.neg + other.neg, self.variance + other.variance,
            self.request,
        )  # fmt: skip


@dataclass
class CellRelease:
    """One cell's released statistics, summed over the sites that released it, with the noise
    variance of each statistic (per bin for the histograms)."""

    hist_pos: np.ndarray
    hist_neg: np.ndarray
    records: float
    events: float
    residuals: float
    squared_errors: float
    variance: dict[str, float]
    ranks: RankSums | None = None
    sites: int = 1

    def __add__(self, other: CellRelease) -> CellRelease:
        return CellRelease(
            self.hist_pos + other.hist_pos,
            self.hist_neg + other.hist_neg,
            self.records + other.records,
            self.events + other.events,
            self.residuals + other.residuals,
            self.squared_errors + other.squared_errors,
            {k: v + other.variance[k] for k, v in self.variance.items()},
            None if self.ranks is None or other.ranks is None else self.ranks + other.ranks,
            self.sites + other.sites,
        )


def read_histograms(
    record: Mapping[str, Any], layout: Layout, noise_multiplier: float
) -> dict[Cell, CellRelease]:
    """A site's release 1 (its reply's metrics) as cells; ValueError unless it holds exactly the
    layout's keys, each a finite number (histograms: ``N_BINS`` of them)."""
    expected = histogram_keys(layout.cells)
    present = {k for k in record if k.startswith(f"{EVAL_PREFIX}.")}
    if missing := sorted(set(expected) - present):
        raise ValueError(f"missing evaluation keys, e.g. {missing[0]}")
    if extra := sorted(present - set(expected)):
        raise ValueError(f"unexpected evaluation keys, e.g. {extra[0]}")
    values: dict[Cell, dict[str, Any]] = {}
    for name, (cell, statistic) in expected.items():
        value = record[name]
        if statistic in HISTOGRAMS:
            array = np.asarray(value, dtype=float) if isinstance(value, list) else None
            if array is None or array.shape != (N_BINS,) or not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be {N_BINS} finite numbers")
            value = array
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        elif not math.isfinite(value):
            raise ValueError(f"{name} must be finite")
        values.setdefault(cell, {})[statistic] = value
    cells = {}
    for cell, stats in values.items():
        table = cell[:2]
        variance = {s: layout.histogram_sd(table, s, noise_multiplier) ** 2 for s in STAT_SHARES}
        cells[cell] = CellRelease(
            stats[HIST_POS], stats[HIST_NEG], float(stats[RECORDS]), float(stats[EVENTS]),
            float(stats[RESIDUALS]), float(stats[SQUARED_ERRORS]), variance,
        )  # fmt: skip
    return cells


def read_ranks(
    record: Mapping[str, Any],
    requests: Mapping[Cell, RankRequest],
    layout: Layout,
    noise_multiplier: float,
) -> dict[Cell, RankSums]:
    """A site's release 2 per requested cell; ValueError unless it answers exactly the
    requests, each sum a finite number."""
    expected = {
        key(RANKS_PREFIX, cell, statistic): cell
        for cell in requests
        for statistic in (RANK_POS, RANK_NEG)
    }
    present = {k for k in record if k.startswith(f"{RANKS_PREFIX}.")}
    if present != set(expected):
        raise ValueError("the rank release does not answer exactly the requested cells")
    for name in expected:
        value = record[name]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number")
    ranks = {}
    for cell, request in requests.items():
        sd = layout.rank_sd(cell[:2], request.center, noise_multiplier)
        ranks[cell] = RankSums(
            float(record[key(RANKS_PREFIX, cell, RANK_POS)]),
            float(record[key(RANKS_PREFIX, cell, RANK_NEG)]),
            sd**2,
            request,
        )
    return ranks


def pool(sites: Iterable[Mapping[Cell, CellRelease]]) -> dict[Cell, CellRelease]:
    """The cells summed over sites."""
    total: dict[Cell, CellRelease] = {}
    for cells in sites:
        for cell, release in cells.items():
            total[cell] = total[cell] + release if cell in total else release
    return total


def with_ranks(
    cells: Mapping[Cell, CellRelease], ranks: Iterable[Mapping[Cell, RankSums]]
) -> dict[Cell, CellRelease]:
    """The cells with the rank sums added: over every site, which for pooled cells must be
    every site that released the cell's histograms (else the cell keeps its histogram AUROC);
    for one site's cells, ``ranks`` is that site's release alone."""
    sums: dict[Cell, list[RankSums]] = {}
    for site in ranks:
        for cell, value in site.items():
            sums.setdefault(cell, []).append(value)
    result = dict(cells)
    for cell, values in sums.items():
        release = result.get(cell)
        if release is None or len(values) != release.sites:
            continue
        total = values[0]
        for value in values[1:]:
            total = total + value
        result[cell] = replace(release, ranks=total)
    return result


# -- post-processing ---------------------------------------------------------------------------


def histogram(noisy: np.ndarray) -> np.ndarray:
    """Non-negative bins from noisy ones (a histogram per row of the last axis): the isotonic
    (non-decreasing, non-negative) fit of the noisy cumulative counts, differenced. Its total
    is the fit's own: anchoring it at a separately released count would pile the difference
    into the last bin."""
    rows = np.cumsum(noisy, axis=-1).reshape(-1, noisy.shape[-1])
    fitted = np.maximum(_non_decreasing(rows), 0.0).reshape(noisy.shape)
    return np.diff(fitted, axis=-1, prepend=0.0)


def _non_decreasing(values: np.ndarray) -> np.ndarray:
    """The least-squares non-decreasing fit of each row of ``values`` by pooling adjacent
    violators, all rows and all violating pairs at once: pooling adjacent violators in any
    order gives the same blocks (each block's points share its mean), so every pass pools every
    pair of neighbouring blocks out of order, until none is."""
    count, length = values.shape
    starts = np.ones((count, length), dtype=bool)  # where a block starts: each point alone
    offsets = np.arange(count)[:, None] * length  # block numbers of a row start at its offset
    while True:
        block = np.cumsum(starts, axis=1) + (offsets - 1)
        sums = np.bincount(block.ravel(), weights=values.ravel(), minlength=values.size)
        sizes = np.bincount(block.ravel(), minlength=values.size)
        fitted = (sums / np.maximum(sizes, 1))[block]
        violated = starts[:, 1:] & (fitted[:, :-1] > fitted[:, 1:])
        if not violated.any():
            return fitted
        starts[:, 1:] &= ~violated


def class_histograms(release: CellRelease) -> tuple[np.ndarray, np.ndarray]:
    """The post-processed positive and negative histograms of a cell."""
    return histogram(release.hist_pos), histogram(release.hist_neg)


def reconcile(cells: Mapping[Cell, CellRelease], layout: Layout) -> dict[Cell, CellRelease]:
    """Records and events of each group column's (and intersection's) levels adjusted so that
    they add up to the pooled cell's: the gap is shared in proportion to the levels' noise
    variances (weighted least squares with the pooled count held fixed: it is the most precise
    count of the release), then kept non-negative."""
    result = dict(cells)
    total = cells.get(POOLED_CELL)
    if total is None:
        return result
    for table, levels in layout.tables.items():
        members = [(*table, level) for level in levels]
        if table == POOLED_CELL[:2] or not all(c in cells for c in members):
            continue
        for statistic in (RECORDS, EVENTS):
            values = np.array([getattr(cells[c], statistic) for c in members])
            variances = np.array([cells[c].variance[statistic] for c in members])
            target = max(getattr(total, statistic), 0.0)
            adjusted = np.maximum(values + (target - values.sum()) * variances / variances.sum(), 0)
            if adjusted.sum() > 0:
                adjusted *= target / adjusted.sum()
            for c, value in zip(members, adjusted, strict=True):
                result[c] = replace(result[c], **{statistic: float(value)})
    return result


# -- metrics -----------------------------------------------------------------------------------


@dataclass
class Interval:
    """A metric's estimate and 95% interval before publication. ``bounds`` is the metric's own
    range: the width rule reads the interval before it is cut to the range, and the published
    estimate and interval are then cut to it."""

    value: float | None
    ci: list[float] | None
    width_limit: float = MAX_CI_WIDTH
    bounds: tuple[float, float] = (-math.inf, math.inf)

    def published(self) -> tuple[float | None, list[float] | None, str | None]:
        if self.value is None:
            return None, None, "undefined (a class is absent, or the fit does not converge)"
        if self.ci is None:
            return None, None, "no 95% interval (the fit fails on most redraws of the noise)"
        low, high = self.bounds
        ci = [max(low, self.ci[0]), min(high, self.ci[1])]
        if self.ci[1] - self.ci[0] > self.width_limit:
            return None, ci, "95% interval too wide (DP noise and sampling)"
        return min(max(self.value, low), high), ci, None


@dataclass
class Metrics:
    """JSON-ready metrics of one cell, with intervals and the reasons for what is n/a."""

    values: dict[str, Any] = field(default_factory=dict)
    na_reason: dict[str, str] = field(default_factory=dict)

    def put(self, name: str, interval: Interval) -> None:
        value, ci, reason = interval.published()
        self.values[name] = value
        self.values[f"{name}_ci"] = ci
        if reason:
            self.na_reason[name] = reason

    def put_or_withhold(self, name: str, interval: Interval, withheld: str | None) -> None:
        """``put``, or the metric n/a with the reason ``withheld`` when that is given."""
        if withheld is None:
            self.put(name, interval)
            return
        self.values[name] = self.values[f"{name}_ci"] = None
        self.na_reason[name] = withheld

    def as_dict(self) -> dict[str, Any]:
        return {**self.values, "na_reason": dict(self.na_reason)}


def cell_metrics(release: CellRelease, seed: int = 0) -> dict[str, Any]:
    """Every metric of one cell (pooled, a site, a group level), intervals covering noise and
    sampling; ``None`` for what is undefined or too uncertain, the reason in ``na_reason``."""
    pos, neg = class_histograms(release)
    n, events = max(release.records, 0.0), float(pos.sum())
    out = Metrics()
    out.values.update(
        n=round(n), n_se=round(math.sqrt(release.variance[RECORDS]), 1),
        n_pos=round(events), n_pos_se=round(math.sqrt(release.variance[EVENTS]), 1),
        threshold=THRESHOLD,
    )  # fmt: skip
    draws = _bootstrap(release, pos, neg, seed)
    out.put("prevalence", _ratio_interval(events, n, release.variance[EVENTS], release))
    out.put("auroc", _auroc_interval(release, pos, neg))
    out.values["auroc_method"] = "rank release" if release.ranks else "binned histograms"
    n_variance = release.variance[RECORDS]
    brier = _mean_interval(
        release.squared_errors, n, release.variance[SQUARED_ERRORS], n_variance, 0.25
    )
    out.put("brier", brier)
    prevalence = events / n if n > 0 else None
    out.values["brier_scaled"] = (
        None
        if (published_brier := brier.published()[0]) is None or not prevalence or prevalence >= 1
        else 1.0 - published_brier / (prevalence * (1.0 - prevalence))
    )
    citl = _mean_interval(release.residuals, n, release.variance[RESIDUALS], n_variance, 0.25)
    out.put("calibration_in_the_large_observed_minus_predicted", citl)
    out.values["mean_predicted"] = (events - release.residuals) / n if n > 0 else None
    out.values["calibration_observed_expected_ratio"] = (
        events / (events - release.residuals) if events - release.residuals > 0 else None
    )
    floor = NOISE_FLOOR * math.sqrt(release.variance[HIST_POS] + release.variance[HIST_NEG])
    binned = _binned_metrics(np.vstack([pos, draws.pos]), np.vstack([neg, draws.neg]), floor)
    for name, values in binned.items():
        limit = 2 * MAX_CI_WIDTH if name in _WIDE_SCALE else MAX_CI_WIDTH
        value = None if math.isnan(values[0]) else float(values[0])
        out.put(name, bootstrap_interval(value, values[1:], limit))
    out.values["roc_curve"] = _roc_curve(pos, neg, draws)
    out.values["calibration"] = _calibration_bins(pos, neg, draws)
    out.values["diagnostics"] = score_diagnostics(pos, neg)
    return out.as_dict()


_WIDE_SCALE = {"calibration_intercept", "calibration_slope", "calibration_line_intercept"}
_RATES = {
    "accuracy": lambda tp, fp, tn, fn: (tp + tn, tp + fp + tn + fn),
    "sensitivity": lambda tp, fp, tn, fn: (tp, tp + fn),
    "specificity": lambda tp, fp, tn, fn: (tn, tn + fp),
    "ppv": lambda tp, fp, tn, fn: (tp, tp + fp),
    "npv": lambda tp, fp, tn, fn: (tn, tn + fn),
}  # (numerator, denominator) of each rate


def _binned_metrics(pos: np.ndarray, neg: np.ndarray, floor: float) -> dict[str, np.ndarray]:
    """The metrics read from the class histograms alone, per row of ``pos`` and ``neg`` (NaN
    where undefined): AUPRC, the threshold metrics at risk 0.5 (a bin edge), the logistic
    recalibration and the lowess E-statistics. Calibration is fitted on the bins holding more
    than ``floor`` records: below it a bin's mass is mostly noise that post-processing could
    not remove, and such bins, at the extreme logits, pull the slope towards 0 (measured: slope
    0.85 against an exact 1.10 at epsilon 3; 1.11 with the floor at 3 noise SDs)."""
    values = {"auprc": m.average_precision(pos, neg)}
    counts = m.threshold_counts(pos, neg, THRESHOLD_BIN)
    for name, rate in _RATES.items():
        numerator, denominator = rate(*counts)
        values[name] = np.divide(
            numerator, denominator, out=np.full(denominator.shape, np.nan), where=denominator != 0
        )
    signal = (pos + neg) > floor
    fitted = signal.sum(axis=-1) >= MIN_CALIBRATION_BINS
    fits = m.calibration_fit(_LOGITS, pos * signal, neg * signal)
    names = ("calibration_intercept", "calibration_slope", "calibration_line_intercept")
    values.update(
        {name: np.where(fitted, fit, np.nan) for name, fit in zip(names, fits, strict=True)}
    )
    values.update(m.calibration_errors(_LOGITS, pos * signal, neg * signal))
    return values


def bootstrap_interval(value: float | None, replicates: np.ndarray, limit: float) -> Interval:
    """The union of the percentile and the basic (reflected) bootstrap intervals. Post-processing
    shrinks noisy histograms (the isotonic fit pools bins), so replicates drawn around the
    shrunk estimate scatter around a biased point; the basic interval reflects that bias and the
    union covers both readings. No interval when most redraws give no value (NaN)."""
    if value is None:
        return Interval(None, None, limit)
    usable = replicates[~np.isnan(replicates)]
    if len(usable) < len(replicates) // 2:
        return Interval(value, None, limit)
    low, high = np.quantile(usable, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2])
    interval = [float(min(low, 2 * value - high)), float(max(high, 2 * value - low))]
    return Interval(value, interval, limit)


def _ratio_interval(
    numerator: float, denominator: float, variance: float, release: CellRelease
) -> Interval:
    """A proportion's interval: binomial sampling plus the numerator's and denominator's noise."""
    if denominator <= 0:
        return Interval(None, None)
    share = min(max(numerator / denominator, 0.0), 1.0)
    spread = share * (1 - share) / denominator
    spread += (variance + share**2 * release.variance[RECORDS]) / denominator**2
    return _symmetric(share, math.sqrt(spread), 0.0, 1.0)


def _mean_interval(
    total: float, n: float, variance: float, n_variance: float, spread_bound: float
) -> Interval:
    """A mean of per-record values in [-1, 1] over a noisy count: the sum's noise, the count's
    (by the delta method) and a sampling variance at most ``spread_bound`` per record. Undefined
    when the count's own 95% interval reaches a quarter of it: the ratio is then unstable."""
    if n <= 0 or _Z * math.sqrt(n_variance) > n / 4:
        return Interval(None, None)
    value = total / n
    se = math.sqrt((variance + value**2 * n_variance) / n**2 + spread_bound / n)
    return _symmetric(value, se, -1.0, 1.0)


def _symmetric(value: float, se: float, low: float, high: float) -> Interval:
    return Interval(value, [value - _Z * se, value + _Z * se], bounds=(low, high))


def _auroc_interval(release: CellRelease, pos: np.ndarray, neg: np.ndarray) -> Interval:
    area = m.auroc(pos, neg)
    sampling = m.delong_variance(pos, neg)
    if area is None or sampling is None:
        return Interval(None, None)
    if release.ranks is None:
        noise = _histogram_auroc_noise(release, pos, neg)
        return _symmetric(area, math.sqrt(sampling + noise), 0.0, 1.0)
    ranks = release.ranks
    n_pos, n_neg = release.events, release.records - release.events
    if n_pos <= 0 or n_neg <= 0:
        return Interval(None, None)
    request = ranks.request
    reference = np.asarray(request.cdf_pos), np.asarray(request.cdf_neg)
    value = request.center + ranks.pos / n_pos - ranks.neg / n_neg
    value += float(_second_order(_cdf(pos), _cdf(neg), *reference))
    noise = ranks.variance / n_pos**2 + ranks.variance / n_neg**2
    noise += _second_order_error(release, pos, neg, *reference)
    return _symmetric(value, math.sqrt(sampling + noise), 0.0, 1.0)


def _histogram_auroc_noise(release: CellRelease, pos: np.ndarray, neg: np.ndarray) -> float:
    """The AUROC's variance from the histograms' noise, by the delta method at the estimate."""
    n_pos, n_neg = pos.sum(), neg.sum()
    area = m.auroc(pos, neg)
    below = (np.cumsum(neg) - neg / 2) / n_neg
    above = (n_pos - np.cumsum(pos) + pos / 2) / n_pos
    return float(
        release.variance[HIST_POS] * np.sum(((below - area) / n_pos) ** 2)
        + release.variance[HIST_NEG] * np.sum(((above - area) / n_neg) ** 2)
    )


def _cdf(counts: np.ndarray) -> np.ndarray:
    """A histogram's CDF at the bin edges (per row of the last axis)."""
    total = np.maximum(counts.sum(axis=-1, keepdims=True), 1e-12)
    start = np.zeros((*counts.shape[:-1], 1))
    return np.concatenate([start, np.cumsum(counts, axis=-1) / total], axis=-1)


def _integral(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The integral of ``u dv`` for CDFs given at the bin edges (per row of the last axis),
    both interpolated alike within a bin (``federation.wire.evaluation.cdf_at``): exact for
    that interpolation."""
    return np.einsum("...i,...i->...", np.diff(v, axis=-1), (u[..., :-1] + u[..., 1:]) / 2)[()]


def _second_order(cdf_pos: np.ndarray, cdf_neg: np.ndarray, ref_pos, ref_neg) -> np.ndarray:
    """What a cell's AUROC adds to the rank sums' first-order estimate when the rank release
    used other CDFs than the cell's own: ``integral (G - G_ref) d(F - F_ref)``, zero when the
    cell is the one the CDFs came from."""
    return _integral(cdf_neg - ref_neg, cdf_pos - ref_pos)


def _second_order_error(
    release: CellRelease,
    pos: np.ndarray,
    neg: np.ndarray,
    ref_pos: np.ndarray,
    ref_neg: np.ndarray,
) -> float:
    """Mean squared error of the second-order term from release 1's noise: the cell's noisy
    histograms redrawn around the post-processed ones (``pos``, ``neg``), the term recomputed
    from each draw."""
    exact = _second_order(_cdf(pos), _cdf(neg), ref_pos, ref_neg)
    sd = np.sqrt([release.variance[HIST_POS], release.variance[HIST_NEG]])[:, None]
    # The draws in the order of a loop over draws, positives' noise before negatives'.
    noise = np.random.default_rng(0).standard_normal((BOOTSTRAP_DRAWS, 2, N_BINS)) * sd
    redrawn = _cdf(histogram(np.stack([pos, neg])[None] + noise))
    errors = _second_order(redrawn[:, 0], redrawn[:, 1], ref_pos, ref_neg)
    return float(np.mean(np.square(errors - exact)))


def rank_request(release: CellRelease) -> RankRequest | None:
    """What to ask of a cell in release 2: its two class CDFs from release 1, centred on their
    AUROC; None when the cell has no AUROC to refine."""
    pos, neg = class_histograms(release)
    area = m.auroc(pos, neg)
    if area is None:
        return None
    cdf_pos, cdf_neg = (tuple(float(v) for v in np.clip(_cdf(h), 0, 1)) for h in (pos, neg))
    return RankRequest(cdf_pos, cdf_neg, min(max(area, 0.0), 1.0))


@dataclass
class _Draws:
    """Bootstrap replicates of a cell's post-processed histograms (a row per draw): Poisson
    sampling of the bins plus a fresh draw of the release's noise."""

    pos: np.ndarray
    neg: np.ndarray


def _bootstrap(release: CellRelease, pos: np.ndarray, neg: np.ndarray, seed: int) -> _Draws:
    """Redraws around the post-processed ``pos`` and ``neg``. The generator is called draw by
    draw (Poisson and normal variates take varying amounts of its stream, so this order is what
    makes a seed's draws these ones); the post-processing then runs on all draws at once."""
    rng = np.random.default_rng(seed)
    sd_pos, sd_neg = math.sqrt(release.variance[HIST_POS]), math.sqrt(release.variance[HIST_NEG])
    noisy = np.empty((2, BOOTSTRAP_DRAWS, N_BINS))
    for draw in range(BOOTSTRAP_DRAWS):
        noisy[0, draw] = rng.poisson(pos) + rng.normal(0, sd_pos, N_BINS)
        noisy[1, draw] = rng.poisson(neg) + rng.normal(0, sd_neg, N_BINS)
    cleaned = histogram(noisy)
    return _Draws(cleaned[0], cleaned[1])


def _roc_curve(pos: np.ndarray, neg: np.ndarray, draws: _Draws) -> list[dict[str, float]]:
    """The ROC curve at every bin edge (monotone by construction) with a pointwise 95% band of
    the true-positive rate."""
    fpr, tpr = m.roc_points(pos, neg)
    replicates = m.roc_points(draws.pos, draws.neg)[1]
    low, high = np.quantile(replicates, [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2], axis=0)
    return [
        {"fpr": float(f), "tpr": float(t), "tpr_low": float(lo), "tpr_high": float(hi)}
        for f, t, lo, hi in zip(fpr, tpr, low, high, strict=True)
    ]


def _calibration_bins(pos: np.ndarray, neg: np.ndarray, draws: _Draws) -> list[dict[str, Any]]:
    """Observed vs predicted risk in groups of adjacent score bins, merged until each holds more
    than ``MIN_CALIBRATION_RECORDS`` (noisy) records, with a 95% interval of the observed risk;
    a group's observed risk is n/a when that interval is wider than ``MAX_CI_WIDTH``."""
    records = pos + neg
    groups, start = [], 0
    for end in range(1, N_BINS + 1):
        if records[start:end].sum() > MIN_CALIBRATION_RECORDS:
            groups.append((start, end))
            start = end
    if not groups:
        return []
    groups[-1] = (groups[-1][0], N_BINS)
    bins = []
    risks = expit(_LOGITS)
    starts = [low for low, _ in groups]  # the groups tile the bins
    group_events = np.add.reduceat(draws.pos, starts, axis=1)
    group_drawn = group_events + np.add.reduceat(draws.neg, starts, axis=1)
    for index, (low, high) in enumerate(groups):
        count = records[low:high].sum()
        observed = pos[low:high].sum() / count
        predicted = float(np.dot(records[low:high], risks[low:high]) / count)
        events, drawn = group_events[:, index], group_drawn[:, index]
        replicates = events[drawn > 0] / drawn[drawn > 0]
        ci = (
            [float(q) for q in np.quantile(replicates, [0.025, 0.975])] if replicates.size else None
        )
        wide = ci is None or ci[1] - ci[0] > MAX_CI_WIDTH
        bins.append(
            {
                "risk_low": float(expit(_edge(low))),
                "risk_high": float(expit(_edge(high))),
                "count": round(float(count)),
                "mean_predicted": predicted,
                "observed": None if wide else float(observed),
                "observed_ci": ci,
            }
        )
    return bins


def _edge(index: int) -> float:
    """The logit at the lower edge of bin ``index`` (bins 0 and N_BINS: the ends)."""
    if index == 0:
        return -math.inf
    if index >= N_BINS:
        return math.inf
    return float(INNER_EDGES[index - 1])


def score_diagnostics(pos: np.ndarray, neg: np.ndarray) -> list[str]:
    """What makes the scores unusable, as findings: (nearly) everyone in one score bin, or in
    the two saturated tails (risks below 0.25% or above 98%: a diverged model)."""
    records = pos + neg
    total = records.sum()
    findings = []
    if total <= 0:
        return findings
    if records.max() / total >= DEGENERATE_SHARE:
        findings.append("the model gives (nearly) every record the same score")
    if (records[0] + records[-1]) / total >= DEGENERATE_SHARE:
        findings.append("the scores saturate at 0 or 1: the model diverged")
    return findings


def is_publishable(release: CellRelease, min_count: int = MIN_PUBLISHED_COUNT) -> bool:
    """A level's metrics are published only when its noisy records, events and non-events each
    exceed the dissemination threshold."""
    events = release.events
    return min(release.records, events, release.records - events) > min_count


def intersection_tables(layout: Layout) -> list[str]:
    return [column for kind, column in layout.tables if kind == INTERSECTION]


# -- the run's evaluation tables ------------------------------------------------------------------


def evaluation_tables(
    sites: Mapping[str, Mapping[Cell, CellRelease]],
    pooled: Mapping[Cell, CellRelease],
    layout: Layout,
) -> dict[str, Any]:
    """``summary.json``'s ``metrics``: pooled (with its rank release), per site, per group level
    and per intersection level; a level or site below the dissemination threshold is withheld
    with its reason. ``pooled`` holds the reconciled cells with their rank sums."""
    return metric_tables(sites, pooled, layout, cell_metrics)


def metric_tables(
    sites: Mapping[str, Mapping[Cell, Any]],
    pooled: Mapping[Cell, Any],
    layout: Layout,
    metrics_of: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """Any task's metrics tables: ``metrics_of`` of the pooled cell, of each site's and of each
    group and intersection level, each withheld with its reason where no site released it or
    where it is below the dissemination threshold."""

    def published(release: Any) -> dict[str, Any]:
        if release is None:
            return {"withheld_reason": "no site released it"}
        if not is_publishable(release):
            return {
                "withheld_reason": (
                    f"{MIN_PUBLISHED_COUNT} or fewer records, events or non-events (after DP noise)"
                )
            }
        return metrics_of(release)

    result: dict[str, Any] = {
        "pooled": published(pooled.get(POOLED_CELL)),
        "per_site": {name: published(cells.get(POOLED_CELL)) for name, cells in sites.items()},
        "per_group": {},
        "per_intersection": {},
    }
    for (kind, column), levels in layout.tables.items():
        if kind == POOLED_CELL[0]:
            continue
        table = result["per_group" if kind != INTERSECTION else "per_intersection"]
        table[column] = {}
        for level in levels:
            metrics = published(pooled.get((kind, column, level)))
            table[column][level] = {
                "metrics": None if "withheld_reason" in metrics else metrics,
                "withheld_reason": metrics.get("withheld_reason"),
            }
    return result


def representation(
    sites: Mapping[str, Mapping[Cell, CellRelease]],
    pooled: Mapping[Cell, CellRelease],
    layout: Layout,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Test records per group column and level, pooled and per site, from the evaluation
    release (noisy counts, rounded; ``None`` at or under the dissemination threshold)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for (kind, column), levels in layout.tables.items():
        if kind == POOLED_CELL[0] or kind == INTERSECTION:
            continue
        table[column] = {}
        for level in levels:
            cell = (kind, column, level)
            total = pooled.get(cell)
            table[column][level] = {
                "total": published_count(total.records) if total is not None else None,
                "total_se": round(math.sqrt(total.variance[RECORDS]), 1) if total else None,
                "sites": {
                    name: published_count(cells[cell].records) if cell in cells else None
                    for name, cells in sites.items()
                },
            }
    return table


def published_count(value: float) -> int | None:
    """A noisy count as published: rounded, ``None`` at or under the dissemination threshold."""
    count = round(value)
    return count if count > MIN_PUBLISHED_COUNT else None
