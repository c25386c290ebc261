"""A model's risks for encoded rows: the one place the node (evaluation) and ``allfed predict``
turn a model's outputs into risks, so that both give the same number for the same row."""

from __future__ import annotations

import numpy as np
import torch

from federation.wire.survival_evaluation import linear_predictors
from models.survival import DiscreteTimeHazard, survival_at


def risks(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Risks in [0, 1] for any weights, also crafted ones an evaluate message carries
    (non-finite logits become 0.5 or the nearer end, never an error that would depend on the
    data)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).squeeze(-1).double()
    logits = torch.nan_to_num(logits, nan=0.0)
    return torch.sigmoid(logits).numpy().astype(float)


def survival_risks(
    model: DiscreteTimeHazard, x: np.ndarray, horizons: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A survival model's risk score per row (``linear_predictors``, as the node's evaluation
    bins it; higher: an earlier event) and its chance of the event by each horizon (rows x
    horizons: one minus the survival at the end of the interval the horizon closes; every
    horizon is one of the model's cuts). Non-finite outputs of crafted weights become the
    nearer end, as ``risks`` does."""
    cuts = [float(c) for c in model.cuts]
    scores = linear_predictors(model, x)  # also sets eval mode
    with torch.no_grad():
        survival = torch.nan_to_num(survival_at(model, torch.from_numpy(x)).double(), nan=1.0)
    at = [cuts.index(float(h)) for h in horizons]
    return scores, (1.0 - survival[:, at]).clamp(0, 1).numpy()
