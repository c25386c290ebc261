"""How a categorical column becomes model inputs: shared by the node's encoding
(``client.features.encode_features``) and the public probe the aggregator bins scores with
(``wire.survival_evaluation.probe_inputs``), so the two cannot drift apart."""

from __future__ import annotations

import numpy as np


def categorical_inputs(codes: np.ndarray, n_levels: int) -> np.ndarray:
    """One categorical column's inputs: for each declared level but the first (the reference,
    ``wire.spec.feature_names``) its indicator minus 1/L, so that a missing level (code -1,
    allowed under ``impute``) is 0 in each, the inputs' mean over the L levels, as a missing
    numeric value is its column's mean.

    Reference coding rather than an indicator per level: with the intercept a full set is
    collinear, and every record's gradient then spends its clipping norm, and DP-SGD its
    noise, on one more input. Centring the indicators does not change what the model can say
    (a level's coefficient is still its log odds ratio against the reference; only the
    intercept moves), but it takes the inputs' shared part off the intercept, so DP-SGD's few
    clipped steps get further: on Fed-Heart-Disease with its missing values, in process at
    epsilon 3, AUROC 0.895 against 0.882 uncentred (centralized 0.897)."""
    inputs = np.full((len(codes), n_levels - 1), -1.0 / n_levels)
    present = codes > 0
    inputs[np.flatnonzero(present), codes[present] - 1] += 1.0
    inputs[codes < 0] = 0.0
    return inputs


def mean_input_variance(numeric_columns: int, categorical_levels: list[int]) -> float:
    """The mean variance of a model's inputs as public figures put it: 1 for a numeric column
    (standardized) and ``(1/L)(1 - 1/L)`` for each input of a categorical column of L levels
    (its levels taken as equally common). Centred indicators vary far less than standardized
    columns, so DP-SGD's clipped steps move their coefficients more slowly
    (``privacy.planner``: a binary model's learning rate is planned per unit of this)."""
    variances = [1.0] * numeric_columns
    for levels in categorical_levels:
        variances += [(1 / levels) * (1 - 1 / levels)] * (levels - 1)
    return sum(variances) / len(variances) if variances else 1.0
