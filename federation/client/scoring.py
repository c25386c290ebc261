"""A model's risks for encoded rows: the one place the node (evaluation) and ``allfed predict``
turn logits into risks, so that both give the same number for the same row."""

from __future__ import annotations

import numpy as np
import torch


def risks(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Risks in [0, 1] for any weights, also crafted ones an evaluate message carries
    (non-finite logits become 0.5 or the nearer end, never an error that would depend on the
    data)."""
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).squeeze(-1).double()
    logits = torch.nan_to_num(logits, nan=0.0)
    return torch.sigmoid(logits).numpy().astype(float)
