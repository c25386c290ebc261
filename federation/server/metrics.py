"""Pooled evaluation metrics from summed ScoreStats: the server never sees a record's score.

Ratios of sums (prevalence, Brier, log loss, the confusion-matrix rates, calibration) are exact.
Ranking metrics come from the fine logit-scale histograms, highest bin first: records sharing a
bin are ties, counted 1/2 in the Mann-Whitney AUROC and crossed as one threshold in the average
precision (as sklearn treats tied scores). The AUROC interval is DeLong's: every record in a bin
has the same placement value, so the DeLong variance of the binned scores comes from per-bin
sums. Small counts never reach the output: a calibration bin with 1..20 records is withheld, and
the ROC curve is thinned to at most ROC_POINTS + 1 points.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from federation.scorestats import CAL_BINS, THRESHOLD, ScoreStats
from privacy.disclosure import is_disclosive

CI_LEVEL = 0.95
ROC_POINTS = 80
_Z = NormalDist().inv_cdf(0.5 + CI_LEVEL / 2)


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
        "accuracy": _ratio(stats.tp + stats.tn, n),
        "sensitivity": _ratio(stats.tp, stats.tp + stats.fn),
        "specificity": _ratio(stats.tn, stats.tn + stats.fp),
        "ppv": _ratio(stats.tp, stats.tp + stats.fp),
        "npv": _ratio(stats.tn, stats.tn + stats.fn),
        "mean_predicted": _ratio(stats.sum_score, n),
        "discrimination_slope": _discrimination_slope(stats),
        "calibration_in_the_large_observed_minus_predicted": _ratio(n_pos - stats.sum_score, n),
        "calibration_observed_expected_ratio": _ratio(n_pos, stats.sum_score),
        "calibration": _calibration_bins(stats),
    }


def metrics_or_none(stats: ScoreStats | None) -> dict[str, Any] | None:
    """Metrics of a group level, or None where the site withheld it (small cell)."""
    return None if stats is None else compute_metrics(stats)


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
    """Observed vs predicted per equal-width probability bin; 1..20-record bins are withheld."""
    bins = []
    for k in range(CAL_BINS):
        count = int(stats.cal_count[k])
        released = count > 0 and not is_disclosive(count)
        bins.append(
            {
                "bin_lower": k / CAL_BINS,
                "bin_upper": (k + 1) / CAL_BINS,
                "count": None if is_disclosive(count) else count,
                "mean_predicted": float(stats.cal_sum_p[k] / count) if released else None,
                "observed": float(stats.cal_sum_y[k] / count) if released else None,
            }
        )
    return bins
