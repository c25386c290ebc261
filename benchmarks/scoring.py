"""Exact, record-by-record scores of a risk model: discrimination and calibration.

A benchmark holds the public data, so it scores the final model itself on every test record,
not through the (coarsened, noisy) statistics the sites release. Calibration follows Van
Calster et al. (2016, 2019): calibration-in-the-large (observed minus mean predicted risk), the
calibration intercept (the logistic recalibration's intercept with the slope fixed at 1) and the
calibration slope (logit P(y=1) = a + b logit(p)); a calibrated model has 0, 0 and 1.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

_NEWTON_STEPS = 100
_EPS = 1e-12


def score(labels: np.ndarray, risks: np.ndarray) -> dict[str, float]:
    """AUROC, mean predicted, observed, calibration-in-the-large, intercept and slope."""
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(risks, dtype=float), _EPS, 1 - _EPS)
    z = logit(p)
    ones = np.ones_like(z)
    intercept = _logistic_fit(ones[:, None], z, y)
    line = _logistic_fit(np.column_stack([ones, z]), np.zeros_like(z), y)
    return {
        "auroc": float(roc_auc_score(y, p)),
        "mean_predicted": float(p.mean()),
        "observed": float(y.mean()),
        "citl": float(y.mean() - p.mean()),
        "calibration_intercept": float(intercept[0]),
        "calibration_slope": float(line[1]),
        "brier": float(np.mean((p - y) ** 2)),
    }


def _logistic_fit(design: np.ndarray, offset: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Maximum-likelihood coefficients of logit P(y=1) = offset + design @ beta (Newton)."""
    beta = np.zeros(design.shape[1])
    for _ in range(_NEWTON_STEPS):
        risk = expit(offset + design @ beta)
        gradient = design.T @ (y - risk)
        hessian = (design * (risk * (1 - risk))[:, None]).T @ design
        try:
            step = np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:  # risks all equal or separated: no recalibration line
            return np.full(design.shape[1], np.nan)
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


SUMMARY_KEYS = ("auroc", "mean_predicted", "observed", "citl", "calibration_intercept",
                "calibration_slope", "brier")  # fmt: skip


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    """Mean and SD (over runs: seeds and DP noise) of every score."""
    out: dict[str, float] = {"runs": len(runs)}
    for key in SUMMARY_KEYS:
        values = np.array([run[key] for run in runs], dtype=float)
        out[key] = float(values.mean())
        out[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out
