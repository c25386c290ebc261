"""Metrics of binned scores: what the aggregator can compute from per-class score histograms.

Pure functions of (positives per bin, negatives per bin), highest bin last, with the bins'
representative logits; ``server.evaluation`` feeds them the sites' post-processed DP
histograms. Ties within a bin count 1/2 in the Mann-Whitney AUROC and cross as one threshold in
the average precision (as scikit-learn treats tied scores).

Calibration from the bins: the calibration intercept (logit P(y=1) = a + logit(p), slope fixed
at 1) and slope b of logit P(y=1) = a' + b logit(p), by Newton's method on the weighted bins; and
the E-statistics of Austin and Steyerberg (2019) as OHDSI's PatientLevelPrediction computes them:
a lowess curve (span 2/3, local linear, no robustness iterations) of the outcome on the predicted
risk, and the mean (E-avg, the ICI), median, 90th percentile and maximum over the records of
|smoothed observed risk - predicted risk|.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

LOWESS_SPAN = 2 / 3
_NEWTON_STEPS = 100


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann-Whitney AUROC of binned scores (ties 1/2); None unless both classes occur."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if not (n_pos > 0 and n_neg > 0):
        return None
    below = np.cumsum(neg) - neg / 2  # negatives below each bin, ties half
    return float(np.dot(pos, below) / (n_pos * n_neg))


def delong_variance(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """DeLong's sampling variance of the binned AUROC: every record in a bin has the same
    placement value. None with fewer than two records of a class."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos < 2 or n_neg < 2:
        return None
    area = auroc(pos, neg)
    pos_placement = (np.cumsum(neg) - neg / 2) / n_neg  # share of negatives below a positive
    neg_placement = (n_pos - np.cumsum(pos) + pos / 2) / n_pos  # share of positives above
    var_pos = np.dot(pos, (pos_placement - area) ** 2) / (n_pos - 1)
    var_neg = np.dot(neg, (neg_placement - area) ** 2) / (n_neg - 1)
    return float(var_pos / n_pos + var_neg / n_neg)


def average_precision(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Average precision, thresholds from the highest bin down (scikit-learn's definition)."""
    if not (pos.sum() > 0 and neg.sum() > 0):
        return None
    tp, fp = np.cumsum(pos[::-1]), np.cumsum(neg[::-1])
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return float(np.dot(pos[::-1], precision) / pos.sum())


def roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every bin edge, from (0, 0) to (1, 1)."""
    n_pos, n_neg = max(pos.sum(), 1e-12), max(neg.sum(), 1e-12)
    tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / n_neg])
    return np.clip(fpr, 0, 1), np.clip(tpr, 0, 1)


def threshold_counts(
    pos: np.ndarray, neg: np.ndarray, threshold_bin: int
) -> tuple[float, float, float, float]:
    """(TP, FP, TN, FN) predicting positive from ``threshold_bin`` up."""
    tp, fn = pos[threshold_bin:].sum(), pos[:threshold_bin].sum()
    fp, tn = neg[threshold_bin:].sum(), neg[:threshold_bin].sum()
    return float(tp), float(fp), float(tn), float(fn)


def calibration_fit(
    logits: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """(intercept at slope 1, slope, the line's intercept) of a logistic recalibration on the
    bins; None where a class is absent or the fit does not converge."""
    records, events = pos + neg, pos
    keep = records > 0
    if not (events[keep].sum() > 0 and (records - events)[keep].sum() > 0):
        return None, None, None
    x, records, events = logits[keep], records[keep], events[keep]
    ones = np.ones_like(x)
    at_one = _logistic_fit(ones[:, None], x, records, events)
    line = _logistic_fit(np.column_stack([ones, x]), np.zeros_like(x), records, events)
    return (
        None if at_one is None else float(at_one[0]),
        None if line is None else float(line[1]),
        None if line is None else float(line[0]),
    )


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
        if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 50:
            return None
        if np.max(np.abs(step)) < 1e-10:
            return beta
    return None


def calibration_errors(
    logits: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> dict[str, float | None]:
    """E-avg (ICI), E50, E90 and Emax of the lowess calibration curve over the records."""
    records = pos + neg
    keep = records > 0
    names = ("calibration_e_avg", "calibration_e50", "calibration_e90", "calibration_e_max")
    if keep.sum() < 2 or records[keep].sum() <= 0:
        return dict.fromkeys(names)
    risk = expit(logits[keep])
    weights, events = records[keep], pos[keep]
    error = np.abs(lowess(risk, weights, events, risk) - risk)
    return dict(
        zip(
            names,
            (
                float(np.dot(weights, error) / weights.sum()),
                _weighted_quantile(error, weights, 0.5),
                _weighted_quantile(error, weights, 0.9),
                float(error.max()),
            ),
            strict=True,
        )
    )


def lowess(x: np.ndarray, records: np.ndarray, events: np.ndarray, at: np.ndarray) -> np.ndarray:
    """R's ``lowess(x, y, f = 2/3, iter = 0)`` of ``records`` records, ``events`` of them with
    y = 1, at each sorted ``x``, evaluated at ``at``."""
    needed = max(min(LOWESS_SPAN * records.sum(), records.sum()), 2)
    radius = _neighbourhood(x, records, at, needed)[:, None]
    offset = x[None, :] - at[:, None]
    ratio = np.divide(np.abs(offset), radius, out=(offset != 0).astype(float), where=radius > 0)
    np.minimum(ratio, 1.0, out=ratio)
    tricube = (1 - ratio**3) ** 3
    weight = tricube * records
    weight /= np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
    centre = weight @ x
    spread = weight @ (x * x) - centre * centre
    local = np.sqrt(np.maximum(spread, 0)) > 0.001 * (x[-1] - x[0])
    slope = np.divide(at - centre, spread, out=np.zeros_like(spread), where=local)
    share = np.divide(events, records, out=np.zeros_like(events), where=records > 0)
    fitted = weight @ share
    return fitted + slope * (weight @ (x * share) - centre * fitted)


def _neighbourhood(x: np.ndarray, records: np.ndarray, at: np.ndarray, needed: float) -> np.ndarray:
    """Per point of ``at``, the smallest distance within which ``needed`` records lie."""
    covered = np.concatenate([[0.0], np.cumsum(records)])
    low, high = np.zeros(len(at)), np.full(len(at), max(x[-1] - x[0], 1e-12))
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
