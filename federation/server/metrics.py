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

The metrics the server bootstraps (average precision, the threshold counts, the ROC points, the
recalibration and the E-statistics) take histograms stacked along leading axes (one row per
redraw of the noise) and give one value per row, NaN where a row's metric is undefined: the
aggregator's 200 redraws of a cell are then a few array operations, not 200 Python loops.
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


def average_precision(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision, thresholds from the highest bin down (scikit-learn's definition); NaN
    unless both classes occur."""
    tp, fp = np.cumsum(pos[..., ::-1], axis=-1), np.cumsum(neg[..., ::-1], axis=-1)
    called = tp + fp
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    n_pos = pos.sum(axis=-1)
    defined = (n_pos > 0) & (neg.sum(axis=-1) > 0)
    found = np.einsum("...i,...i->...", pos[..., ::-1], precision)
    return np.where(defined, found / np.where(defined, n_pos, 1.0), np.nan)[()]


def roc_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every bin edge, from (0, 0) to (1, 1)."""
    n_pos = np.maximum(pos.sum(axis=-1, keepdims=True), 1e-12)
    n_neg = np.maximum(neg.sum(axis=-1, keepdims=True), 1e-12)
    start = np.zeros((*pos.shape[:-1], 1))
    tpr = np.concatenate([start, np.cumsum(pos[..., ::-1], axis=-1) / n_pos], axis=-1)
    fpr = np.concatenate([start, np.cumsum(neg[..., ::-1], axis=-1) / n_neg], axis=-1)
    return np.clip(fpr, 0, 1), np.clip(tpr, 0, 1)


def threshold_counts(
    pos: np.ndarray, neg: np.ndarray, threshold_bin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(TP, FP, TN, FN) predicting positive from ``threshold_bin`` up."""
    tp, fn = pos[..., threshold_bin:].sum(axis=-1), pos[..., :threshold_bin].sum(axis=-1)
    fp, tn = neg[..., threshold_bin:].sum(axis=-1), neg[..., :threshold_bin].sum(axis=-1)
    return tp, fp, tn, fn


def calibration_fit(
    logits: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(intercept at slope 1, slope, the line's intercept) of a logistic recalibration on the
    bins (empty bins take no part); NaN where a class is absent or the fit does not converge."""
    records, events = pos + neg, pos
    keep = records > 0
    defined = ((events * keep).sum(axis=-1) > 0) & (((records - events) * keep).sum(axis=-1) > 0)
    rows = np.flatnonzero(defined.reshape(-1))
    weights = records.reshape(-1, logits.size)[rows]
    counts = events.reshape(-1, logits.size)[rows]
    ones = np.ones_like(logits)
    at_one = _logistic_fit(ones[:, None], logits, weights, counts)
    line = _logistic_fit(np.column_stack([ones, logits]), np.zeros_like(logits), weights, counts)
    results = []
    for values in (at_one[:, 0], line[:, 1], line[:, 0]):
        full = np.full(defined.size, np.nan)
        full[rows] = values
        results.append(full.reshape(defined.shape)[()])
    return results[0], results[1], results[2]


def _logistic_fit(
    design: np.ndarray, offset: np.ndarray, records: np.ndarray, events: np.ndarray
) -> np.ndarray:
    """Maximum-likelihood coefficients, per row of ``records`` and ``events``, of ``events`` out
    of ``records`` at logit ``offset + design @ beta`` by Newton's method, all rows at once
    (each stops when it converges); NaN rows where it does not converge."""
    rows, width = records.shape[0], design.shape[1]
    products = (design[:, :, None] * design[:, None, :]).reshape(len(design), -1)
    beta = np.zeros((rows, width))
    result = np.full((rows, width), np.nan)
    active = np.arange(rows)
    for _ in range(_NEWTON_STEPS):
        if active.size == 0:
            break
        current = beta[active]
        weights = records[active]
        risk = expit(offset + current @ design.T)
        gradient = (events[active] - weights * risk) @ design
        hessian = ((weights * risk * (1 - risk)) @ products).reshape(-1, width, width)
        step, solvable = _solve(hessian, gradient)
        current = current + step
        # Diverged: a coefficient beyond 50, infinite or NaN (which fails the comparison).
        failed = ~solvable | ~(np.abs(current).max(axis=1) <= 50)
        converged = ~failed & (np.abs(step).max(axis=1) < 1e-10)
        result[active[converged]] = current[converged]
        beta[active] = current
        active = active[~failed & ~converged]
    return result


def _solve(hessian: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps of a stack of 1 x 1 or 2 x 2 systems, and which are solvable (a singular
    matrix has no step)."""
    if hessian.shape[1] == 1:
        pivot = hessian[:, 0, 0]
        solvable = pivot != 0
        return gradient / np.where(solvable, pivot, 1.0)[:, None], solvable
    a, b, c, d = hessian[:, 0, 0], hessian[:, 0, 1], hessian[:, 1, 0], hessian[:, 1, 1]
    determinant = a * d - b * c
    solvable = determinant != 0
    determinant = np.where(solvable, determinant, 1.0)
    g, h = gradient[:, 0], gradient[:, 1]
    return np.column_stack([(d * g - b * h) / determinant, (a * h - c * g) / determinant]), solvable


E_STATISTICS = ("calibration_e_avg", "calibration_e50", "calibration_e90", "calibration_e_max")


def calibration_errors(
    logits: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> dict[str, np.ndarray]:
    """E-avg (ICI), E50, E90 and Emax of the lowess calibration curve over the records (empty
    bins hold none); NaN for fewer than two non-empty bins."""
    records = pos + neg
    keep = records > 0
    defined = (keep.sum(axis=-1) >= 2) & (records.sum(axis=-1) > 0)
    risk = expit(logits)
    error = np.where(keep, np.abs(lowess(risk, records, pos, risk) - risk), 0.0)
    total = np.where(defined, records.sum(axis=-1), 1.0)
    median, ninetieth = _weighted_quantiles(error, records, (0.5, 0.9))
    values = (
        (records * error).sum(axis=-1) / total,
        median,
        ninetieth,
        np.where(keep, error, -np.inf).max(axis=-1),
    )
    return {
        name: np.where(defined, v, np.nan)[()] for name, v in zip(E_STATISTICS, values, strict=True)
    }


def lowess(x: np.ndarray, records: np.ndarray, events: np.ndarray, at: np.ndarray) -> np.ndarray:
    """R's ``lowess(x, y, f = 2/3, iter = 0)`` of ``records`` records at each sorted ``x`` (a
    row of counts per fit along the last axis, 0 where a point is absent), ``events`` of them
    with y = 1, evaluated at ``at``."""
    shape = (*records.shape[:-1], at.size)
    records, events = records.reshape(-1, x.size), events.reshape(-1, x.size)
    present = records > 0
    with np.errstate(invalid="ignore"):  # a fit without records: no extent
        extent = np.where(present, x, -np.inf).max(axis=1) - np.where(present, x, np.inf).min(1)
    extent = np.nan_to_num(extent, neginf=0.0)[:, None]
    total = records.sum(axis=1)
    needed = np.maximum(np.minimum(LOWESS_SPAN * total, total), 2)
    distance = np.abs(x[None, :] - at[:, None])
    radius = _neighbourhood(distance, records, needed, np.maximum(extent, 1e-12))
    # A zero radius (the needed records all at the point) keeps the point alone: the smallest
    # positive radius gives every other point a ratio over 1 (weight 0) and the point 0.
    ratio = distance / np.maximum(radius, np.finfo(float).tiny)[:, :, None]
    np.minimum(ratio, 1.0, out=ratio)
    close = 1 - ratio * ratio * ratio
    weight = close * close * close * records[:, None, :]  # tricube weights of the records
    share = np.divide(events, records, out=np.zeros_like(events), where=present)
    moments = weight @ np.column_stack([np.ones_like(x), x, x * x])
    responses = weight @ np.stack([share, share * x], axis=2)
    mass = np.maximum(moments[..., 0], 1e-300)
    centre = moments[..., 1] / mass
    spread = moments[..., 2] / mass - centre * centre
    fitted, cross = responses[..., 0] / mass, responses[..., 1] / mass
    local = np.sqrt(np.maximum(spread, 0)) > 0.001 * extent
    slope = np.divide(at - centre, spread, out=np.zeros_like(spread), where=local)
    return (fitted + slope * (cross - centre * fitted)).reshape(shape)


def _neighbourhood(
    distance: np.ndarray, records: np.ndarray, needed: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """Per fit (a row of ``records``) and point of ``at`` (a row of ``distance``, to each x),
    the smallest distance within which ``needed`` records lie: the distance of the point at
    which the records, nearest first, reach ``needed``; ``fallback`` when they never do."""
    order = np.argsort(distance, axis=1, kind="stable")
    nearest = np.take_along_axis(distance, order, axis=1)
    covered = records[:, order] @ np.triu(np.ones((order.shape[1],) * 2))  # running sums
    enough = covered >= needed[:, None, None]
    reached = nearest[np.arange(len(nearest))[None, :], np.argmax(enough, axis=2)]
    return np.where(enough[:, :, -1], reached, fallback)


def _weighted_quantiles(
    values: np.ndarray, weights: np.ndarray, qs: tuple[float, ...]
) -> list[np.ndarray]:
    """Per row, the q-quantiles of ``values`` repeated ``weights`` times (numpy's
    "inverted_cdf")."""
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=-1), axis=-1)
    return [
        np.take_along_axis(
            ordered, np.argmax(cumulative >= q * cumulative[..., -1:], axis=-1)[..., None], -1
        )[..., 0]
        for q in qs
    ]
