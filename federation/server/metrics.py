"""Pooled evaluation metrics from summed ScoreStats: the server never sees a record's score.

Ratios of sums (prevalence, Brier, log loss, the confusion-matrix rates, calibration) are exact.
Ranking metrics come from the fine logit-scale histograms, highest bin first: records sharing a
bin are ties, counted 1/2 in the Mann-Whitney AUROC and crossed as one threshold in the average
precision (as sklearn treats tied scores). The AUROC interval is DeLong's: every record in a bin
has the same placement value, so the DeLong variance of the binned scores comes from per-bin
sums. The ROC curve is thinned to at most ROC_POINTS + 1 points.

Calibration beyond ratios of sums comes from the same histograms, every record placed at its fine
bin's centre logit (at most 0.0025 from its own; p moves by at most 0.0007):

- the calibration intercept (logit P(y=1) = a + logit(p), the slope fixed at 1) and the
  calibration slope b of logit P(y=1) = a' + b logit(p), by Newton's method on the weighted bins;
- the E-statistics of Austin and Steyerberg (2019) as OHDSI's PatientLevelPrediction computes
  them: a lowess curve (span 2/3, local linear, no robustness iterations) of the outcome on the
  predicted risk, and the mean (E-avg, the ICI), median, 90th percentile and maximum over the
  records of |smoothed observed risk - predicted risk|. The curve is evaluated at up to
  LOWESS_POINTS evenly spaced risks and interpolated between them, as R's ``lowess`` does with
  its ``delta``; it is published on a fixed grid of risks, away from the extreme records.

Small counts never reach the output: a calibration bin's observed risk (events / records) is
withheld when its records, events or non-events number 1..20; group metrics (``group_metrics``)
also leave out the threshold metrics when a confusion-matrix cell is 1..20, and the ROC curve;
``publish_groups`` withholds a group when a small group could be recovered by subtraction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy.special import expit

from federation.scorestats import (
    CAL_BINS,
    LEVEL_JOIN,
    LOGIT_MAX,
    LOGIT_MIN,
    N_BINS,
    THRESHOLD,
    ScoreStats,
)
from privacy.disclosure import DEFAULT_MIN_CELL_COUNT, is_disclosive

CI_LEVEL = 0.95
ROC_POINTS = 80
LOWESS_SPAN = 2 / 3
LOWESS_POINTS = 100
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
_Z = NormalDist().inv_cdf(0.5 + CI_LEVEL / 2)
_BIN_LOGITS = LOGIT_MIN + (np.arange(N_BINS) + 0.5) * ((LOGIT_MAX - LOGIT_MIN) / N_BINS)
_NEWTON_STEPS = 100


def compute_metrics(stats: ScoreStats) -> dict[str, Any]:
    """JSON-ready metrics of ``stats``; None (never NaN) wherever a metric is undefined."""
    n, n_pos = stats.n, stats.n_pos
    prevalence = _ratio(n_pos, n)
    brier = _ratio(stats.sum_sq_error, n)
    return {
        "n": n,
        "n_pos": n_pos,
        "prevalence": prevalence,
        **_ranking_metrics(stats),
        "brier": brier,
        "brier_scaled": _scaled_brier(brier, prevalence),
        "log_loss": _ratio(stats.sum_log_loss, n),
        "threshold": THRESHOLD,
        **_threshold_metrics(stats),
        "mean_predicted": _ratio(stats.sum_score, n),
        "discrimination_slope": _discrimination_slope(stats),
        "calibration_in_the_large_observed_minus_predicted": _ratio(n_pos - stats.sum_score, n),
        "calibration_observed_expected_ratio": _ratio(n_pos, stats.sum_score),
        **_calibration_fit(stats),
        **_calibration_errors(stats),
        "calibration": _calibration_bins(stats),
    }


def _threshold_metrics(stats: ScoreStats) -> dict[str, float | None]:
    """Accuracy, sensitivity, specificity, PPV and NPV at THRESHOLD; withheld (None) when any
    site had to coarsen its confusion matrix: a small count moved across the threshold would
    otherwise show as a specificity or PPV of exactly 1."""
    if stats.threshold_coarsened:
        return {**dict.fromkeys(THRESHOLD_METRICS), "threshold_metrics_withheld": True}
    n = stats.n
    return {
        "threshold_metrics_withheld": False,
        "accuracy": _ratio(stats.tp + stats.tn, n),
        "sensitivity": _ratio(stats.tp, stats.tp + stats.fn),
        "specificity": _ratio(stats.tn, stats.tn + stats.fp),
        "ppv": _ratio(stats.tp, stats.tp + stats.fp),
        "npv": _ratio(stats.tn, stats.tn + stats.fn),
    }


def group_metrics(stats: ScoreStats | None) -> dict[str, Any] | None:
    """Metrics of a group level, or None where withheld; without what would reveal a small count.

    A group's sensitivity times its positives is a count, so the threshold metrics go when a
    confusion-matrix cell is 1..20; ROC points are cumulative counts over known totals, so a
    group has no ROC curve.
    """
    if stats is None:
        return None
    metrics = compute_metrics(stats)
    if any(is_disclosive(c) for c in (stats.tp, stats.fp, stats.tn, stats.fn)):
        metrics.update(dict.fromkeys(THRESHOLD_METRICS))
    metrics["roc_curve"] = []
    return metrics


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _scaled_brier(brier: float | None, prevalence: float | None) -> float | None:
    """1 - Brier / Brier of always predicting the prevalence; undefined with one class."""
    if brier is None or prevalence is None or prevalence in (0.0, 1.0):
        return None
    return 1.0 - brier / (prevalence * (1.0 - prevalence))


def _discrimination_slope(stats: ScoreStats) -> float | None:
    """Mean score of positives minus mean score of negatives (Yates); needs both classes."""
    n_pos, n_neg = stats.n_pos, stats.n - stats.n_pos
    if not (n_pos and n_neg):
        return None
    return stats.sum_score_pos / n_pos - (stats.sum_score - stats.sum_score_pos) / n_neg


def _ranking_metrics(stats: ScoreStats) -> dict[str, Any]:
    """AUROC with its CI, AUPRC and a thinned ROC curve; None/[] unless both classes occur."""
    pos = stats.hist_pos[::-1].astype(np.float64)  # highest score bin first
    neg = stats.hist_neg[::-1].astype(np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if not (n_pos and n_neg):
        return {
            "auroc": None,
            "auroc_ci": None,
            "auroc_ci_method": None,
            "auprc": None,
            "roc_curve": [],
        }
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    # Placement values: a negative's share of positives above it, a positive's share of
    # negatives below it, ties counting 1/2. Their means are both the AUROC.
    neg_placement = (tp - pos / 2) / n_pos
    pos_placement = (n_neg - fp + neg / 2) / n_neg
    auroc = float(np.dot(neg, neg_placement) / n_neg)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=pos > 0)
    return {
        "auroc": auroc,
        "auroc_ci": _delong_ci(auroc, pos, pos_placement, neg, neg_placement),
        "auroc_ci_method": f"DeLong {CI_LEVEL:.0%} on binned scores",
        "auprc": float(np.dot(pos, precision) / n_pos),  # sklearn's average precision
        "roc_curve": _thinned_roc(fp / n_neg, tp / n_pos),
    }


def _delong_ci(
    auroc: float,
    pos: np.ndarray,
    pos_placement: np.ndarray,
    neg: np.ndarray,
    neg_placement: np.ndarray,
) -> list[float] | None:
    """DeLong's interval from per-bin placement values; needs two records of each class."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos < 2 or n_neg < 2:
        return None
    var_pos = np.dot(pos, (pos_placement - auroc) ** 2) / (n_pos - 1)
    var_neg = np.dot(neg, (neg_placement - auroc) ** 2) / (n_neg - 1)
    half_width = _Z * float(np.sqrt(var_pos / n_pos + var_neg / n_neg))
    return [max(0.0, auroc - half_width), min(1.0, auroc + half_width)]


def _thinned_roc(fpr: np.ndarray, tpr: np.ndarray) -> list[dict[str, float]]:
    """At most ROC_POINTS + 1 points from (0, 0) to (1, 1), spaced evenly along fpr + tpr."""
    fpr, tpr = np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
    picks = np.unique(np.searchsorted(fpr + tpr, np.linspace(0.0, 2.0, ROC_POINTS + 1)))
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i])} for i in picks]


def _calibration_bins(stats: ScoreStats) -> list[dict[str, Any]]:
    """Observed vs predicted per equal-width probability bin, without small counts.

    A bin with 1..20 records is withheld; its observed risk times its count is its events, so
    that is withheld too when the events or the non-events number 1..20.
    """
    bins = []
    for k in range(CAL_BINS):
        count, events = int(stats.cal_count[k]), int(stats.cal_sum_y[k])
        shown = count > 0 and not is_disclosive(count)
        observed = shown and not (is_disclosive(events) or is_disclosive(count - events))
        bins.append(
            {
                "bin_lower": k / CAL_BINS,
                "bin_upper": (k + 1) / CAL_BINS,
                "count": count if shown or count == 0 else None,
                "mean_predicted": float(stats.cal_sum_p[k] / count) if shown else None,
                "observed": events / count if observed else None,
            }
        )
    return bins


# -- calibration from the fine bins ------------------------------------------------------------


def _binned(stats: ScoreStats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre logit, records and events of every non-empty fine bin, lowest score first."""
    total = stats.hist_pos + stats.hist_neg
    nonempty = np.flatnonzero(total)
    return (
        _BIN_LOGITS[nonempty],
        total[nonempty].astype(np.float64),
        stats.hist_pos[nonempty].astype(np.float64),
    )


def _calibration_fit(stats: ScoreStats) -> dict[str, float | None]:
    """Logistic recalibration: the intercept at slope 1, and the fitted line's slope and
    intercept (0, 1 and 0 for a calibrated model); None with one class or separated classes."""
    logit, records, events = _binned(stats)
    fits: list[np.ndarray | None] = [None, None]
    if stats.n_pos and stats.n - stats.n_pos:
        ones = np.ones_like(logit)
        fits = [
            _logistic_fit(ones[:, None], logit, records, events),
            _logistic_fit(np.column_stack([ones, logit]), np.zeros_like(logit), records, events),
        ]
    at_slope_one, line = fits
    return {
        "calibration_intercept": None if at_slope_one is None else float(at_slope_one[0]),
        "calibration_slope": None if line is None else float(line[1]),
        "calibration_line_intercept": None if line is None else float(line[0]),
    }


def _logistic_fit(
    design: np.ndarray, offset: np.ndarray, records: np.ndarray, events: np.ndarray
) -> np.ndarray | None:
    """Maximum-likelihood coefficients of ``events`` out of ``records`` at logit
    ``offset + design @ beta`` by Newton's method; None when it does not converge."""
    beta = np.zeros(design.shape[1])
    for _ in range(_NEWTON_STEPS):
        risk = expit(offset + design @ beta)
        gradient = design.T @ (events - records * risk)
        hessian = (design * (records * risk * (1 - risk))[:, None]).T @ design
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if not np.all(np.isfinite(beta)):
            return None
        if np.max(np.abs(step)) < 1e-10:
            return beta
    return None


def _calibration_errors(stats: ScoreStats) -> dict[str, Any]:
    """E-avg (ICI), E50, E90 and Emax of the lowess calibration curve, and the curve itself."""
    logit, records, events = _binned(stats)
    if not len(logit):
        keys = ("e_avg", "e50", "e90", "e_max")
        return {**{f"calibration_{k}": None for k in keys}, "calibration_smoothed": []}
    risk = expit(logit)
    at = _evaluation_points(risk)
    smoothed_at = _lowess(risk, records, events, risk[at])
    error = np.abs(np.interp(risk, risk[at], smoothed_at) - risk)
    return {
        "calibration_e_avg": float(np.dot(records, error) / records.sum()),
        "calibration_e50": _weighted_quantile(error, records, 0.5),
        "calibration_e90": _weighted_quantile(error, records, 0.9),
        "calibration_e_max": float(error.max()),
        "calibration_smoothed": _published_curve(risk, records, risk[at], smoothed_at),
    }


def _published_curve(
    risk: np.ndarray, records: np.ndarray, curve_x: np.ndarray, curve_y: np.ndarray
) -> list[dict[str, float]]:
    """The smoothed curve on a fixed grid of risks (0, 0.01, ..., 1), only where more than 20
    records lie on either side: no point sits at, or bounds, one participant's risk."""
    grid = np.linspace(0.0, 1.0, 101)
    covered = np.concatenate([[0.0], np.cumsum(records)])
    at_or_below = covered[np.searchsorted(risk, grid, side="right")]
    at_or_above = covered[-1] - covered[np.searchsorted(risk, grid, side="left")]
    inside = grid[(at_or_below > DEFAULT_MIN_CELL_COUNT) & (at_or_above > DEFAULT_MIN_CELL_COUNT)]
    observed = np.interp(inside, curve_x, curve_y)
    return [
        {"predicted": float(x), "observed": float(y)} for x, y in zip(inside, observed, strict=True)
    ]


def _evaluation_points(x: np.ndarray) -> np.ndarray:
    """Indices of at most LOWESS_POINTS values of sorted ``x``, evenly spread over its range."""
    if len(x) <= LOWESS_POINTS:
        return np.arange(len(x))
    return np.unique(np.searchsorted(x, np.linspace(x[0], x[-1], LOWESS_POINTS)))


def _lowess(x: np.ndarray, records: np.ndarray, events: np.ndarray, at: np.ndarray) -> np.ndarray:
    """R's ``lowess(x, y, f = 2/3, iter = 0)`` of the records at ``at``: ``records`` records,
    ``events`` of them with y = 1, at each sorted ``x``. (R also zeroes tricube weights under
    3e-8 and rounds those above 1 - 3e-9 up to 1; that changes no fitted value visibly.)"""
    needed = max(min(int(LOWESS_SPAN * records.sum() + 1e-7), records.sum()), 2)
    radius = _neighbourhood(x, records, at, needed)[:, None]
    offset = x[None, :] - at[:, None]
    ratio = np.divide(np.abs(offset), radius, out=(offset != 0).astype(float), where=radius > 0)
    np.minimum(ratio, 1.0, out=ratio)
    tricube = 1 - ratio * ratio * ratio
    weight = tricube * tricube * tricube * records
    weight /= weight.sum(axis=1, keepdims=True)
    centre = weight @ x
    spread = weight @ (x * x) - centre * centre
    local = np.sqrt(np.maximum(spread, 0)) > 0.001 * (x[-1] - x[0])
    slope = np.divide(at - centre, spread, out=np.zeros_like(spread), where=local)
    fitted = weight @ (events / records)
    return fitted + slope * (weight @ (x * events / records) - centre * fitted)


def _neighbourhood(x: np.ndarray, records: np.ndarray, at: np.ndarray, needed: float) -> np.ndarray:
    """Per point of ``at``, the smallest distance within which ``needed`` records lie."""
    covered = np.concatenate([[0.0], np.cumsum(records)])
    low, high = np.zeros(len(at)), np.full(len(at), x[-1] - x[0])
    for _ in range(50):
        middle = (low + high) / 2
        inside = (
            covered[np.searchsorted(x, at + middle, side="right")]
            - covered[np.searchsorted(x, at - middle, side="left")]
        )
        enough = inside >= needed
        high, low = np.where(enough, middle, high), np.where(enough, low, middle)
    return high


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of ``values`` repeated ``weights`` times (numpy's "inverted_cdf")."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, q * cumulative[-1])])


# -- group tables ------------------------------------------------------------------------------

Cell = tuple[str, str, str]  # (table, column, level)
GROUP, INTERSECTION = "group", "intersection"


@dataclass
class GroupPool:
    """Group-level statistics summed over sites, and the sites that withheld each level."""

    stats: dict[str, dict[str, ScoreStats]] = field(default_factory=dict)
    withheld_at: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def add(self, site: str, groups: Mapping[str, Mapping[str, ScoreStats | None]]) -> None:
        for column, levels in groups.items():
            for level, level_stats in levels.items():
                if level_stats is None:
                    self.withheld_at.setdefault(column, {}).setdefault(level, []).append(site)
                else:
                    merged = self.stats.setdefault(column, {})
                    merged[level] = merged.get(level, ScoreStats.empty()) + level_stats

    def columns(self) -> list[str]:
        return sorted(set(self.stats) | set(self.withheld_at))

    def levels(self, column: str) -> list[str]:
        return sorted(set(self.stats.get(column, {})) | set(self.withheld_at.get(column, {})))


def publish_groups(
    pooled: ScoreStats,
    single: GroupPool,
    crossed: GroupPool,
    pairs: Mapping[str, tuple[str, str]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-group and per-intersection tables, every level's metrics or None (withheld).

    A level is withheld when its pooled records, events or non-events number 1..20, and also
    when a reader could otherwise recover such a small count by subtraction: a known total (the
    pooled records, a group's records for its row of an intersection, or a total they can add
    up) minus the levels they know. The smallest shown level involved is withheld, again and
    again, until no small count is recoverable. ``pairs`` names the two group columns of each
    intersection column.
    """
    pools = {GROUP: single, INTERSECTION: crossed}
    truth: dict[Cell | None, ScoreStats] = {None: pooled}  # None: the pooled records
    shown: set[Cell] = set()
    for table, pool in pools.items():
        for column in pool.columns():
            for level in pool.levels(column):
                stats = pool.stats.get(column, {}).get(level)
                truth[(table, column, level)] = stats or ScoreStats.empty()
                if stats is not None and not any(is_disclosive(c) for c in _counts(stats)):
                    shown.add((table, column, level))
    constraints = _constraints([cell for cell in truth if cell is not None], single, pairs)
    while (cell := _exposing_cell(truth, shown, constraints)) is not None:
        shown.discard(cell)
    single_table, crossed_table = (
        _table(truth, shown, pool, table) for table, pool in pools.items()
    )
    return single_table, crossed_table


def _counts(stats: ScoreStats) -> tuple[int, int, int]:
    return stats.n, stats.n_pos, stats.n - stats.n_pos


def _constraints(
    cells: list[Cell],
    single: GroupPool,
    pairs: Mapping[str, tuple[str, str]],
) -> list[tuple[Cell | None, list[Cell]]]:
    """(total, the cells that partition part of it): None stands for the pooled records."""
    by_column: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        by_column.setdefault(cell[:2], []).append(cell)
    constraints: list[tuple[Cell | None, list[Cell]]] = [(None, c) for c in by_column.values()]
    for (table, column), members in by_column.items():
        if table != INTERSECTION or column not in pairs:
            continue
        first, second = pairs[column]
        names = _pair_levels(single.levels(first), single.levels(second))
        for position, marginal in enumerate((first, second)):
            rows: dict[str, list[Cell]] = {}
            for cell in members:
                if cell[2] in names:
                    rows.setdefault(names[cell[2]][position], []).append(cell)
            constraints += [((GROUP, marginal, level), row) for level, row in rows.items()]
    return constraints


def _pair_levels(firsts: list[str], seconds: list[str]) -> dict[str, tuple[str, str]]:
    """Joined level name -> its two levels, leaving out a name that two pairs share."""
    names: dict[str, list[tuple[str, str]]] = {}
    for a in firsts:
        for b in seconds:
            names.setdefault(f"{a}{LEVEL_JOIN}{b}", []).append((a, b))
    return {name: found[0] for name, found in names.items() if len(found) == 1}


def _exposing_cell(
    truth: Mapping[Cell | None, ScoreStats],
    shown: set[Cell],
    constraints: list[tuple[Cell | None, list[Cell]]],
) -> Cell | None:
    """A shown cell to withhold because a small count can be recovered, or None.

    A reader knows the pooled counts and the shown cells' counts and, again and again, works
    out the one unknown member of a constraint whose total they know (the rest of the total)
    and a total whose members they all know (their sum). Whenever the rest of a known total
    after its known members is 1..20 records, events or non-events, that rest is a small count.
    """
    value = {cell: np.array(_counts(truth[cell])) for cell in [None, *shown]}
    changed = True
    while changed:
        changed = False
        for total, members in constraints:
            unknown = [cell for cell in members if cell not in value]
            if total in value and len(unknown) < len(members):
                rest = value[total] - sum(value[cell] for cell in members if cell in value)
                if any(is_disclosive(int(count)) for count in rest):
                    return _smallest([cell for cell in members if cell in shown] or shown, truth)
                if len(unknown) == 1:
                    value[unknown[0]], changed = rest, True
            elif total not in value and not unknown:
                value[total], changed = sum(value[cell] for cell in members), True
    return None


def _smallest(cells: Iterable[Cell], truth: Mapping[Cell | None, ScoreStats]) -> Cell | None:
    return min(cells, key=lambda cell: (truth[cell].n, cell), default=None)


def _table(
    truth: Mapping[Cell | None, ScoreStats], shown: set[Cell], pool: GroupPool, table: str
) -> dict[str, dict[str, dict[str, Any]]]:
    return {
        column: {
            level: {
                "metrics": group_metrics(truth[cell]) if cell in shown else None,
                "withheld_at": sorted(pool.withheld_at.get(column, {}).get(level, [])),
            }
            for level in pool.levels(column)
            for cell in [(table, column, level)]
        }
        for column in pool.columns()
    }
