"""A site's evaluation release of a survival model on its test partition (layout and
sensitivity: ``federation.wire.survival_evaluation``).

The exact histograms are computed here and leave only through one OpenDP Gaussian release per
message, after the ledger has admitted it. Scores come from whatever model the message carries:
the release is private for any model, so a crafted one learns no more than noise allows.
"""

from __future__ import annotations

import numpy as np
import torch

from federation.client.evaluation import Members, Statistics, noisy_release
from federation.wire.evaluation import EVAL_PREFIX, Layout, key
from federation.wire.survival_evaluation import (
    EVENTS,
    HISTOGRAM,
    N_SCORE_BINS,
    RECORDS,
    STAT_SHARES,
    score_bins,
    time_bins,
)


def linear_predictors(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's risk scores ``s(x)`` for any weights, also crafted ones (non-finite scores
    become 0 or the nearer end, never an error that would depend on the data)."""
    model.eval()
    with torch.no_grad():
        scores = model(torch.from_numpy(x)).squeeze(-1).double()
    return torch.nan_to_num(scores, nan=0.0).numpy().astype(float)


def survival_statistics(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
) -> Statistics:
    """The release's exact statistics (``outcome``: rows of time in days and event 0/1), and each
    entry's weight (the square root of its share): the weighted vector has L2 sensitivity 1."""
    event = np.asarray(outcome[:, 1] > 0.5, dtype=np.int64)
    intervals = len(cuts) + 1
    flat = (event * intervals + time_bins(outcome[:, 0], cuts)) * N_SCORE_BINS + score_bins(score)
    shares = layout.table_shares()
    names, values, weights = [], [], []
    for table, levels in layout.tables.items():
        for level in levels:
            rows = members[table] == level
            exact = {
                HISTOGRAM: np.bincount(flat[rows], minlength=2 * intervals * N_SCORE_BINS),
                RECORDS: [rows.sum()],
                EVENTS: [event[rows].sum()],
            }
            for statistic, cells in exact.items():
                names.append((key(EVAL_PREFIX, (*table, level), statistic), len(cells)))
                values.extend(float(v) for v in cells)
                weights.extend([np.sqrt(shares[table] * STAT_SHARES[statistic])] * len(cells))
    return names, np.array(values), np.array(weights)


def survival_release(
    outcome: np.ndarray,
    score: np.ndarray,
    members: Members,
    layout: Layout,
    cuts: tuple[float, ...],
    noise_multiplier: float,
) -> dict[str, float | list[float]]:
    """The release: every cell's histogram, records and events, with Gaussian noise of
    ``noise_multiplier`` on the unit-sensitivity weighted vector."""
    return noisy_release(
        *survival_statistics(outcome, score, members, layout, cuts), noise_multiplier
    )
