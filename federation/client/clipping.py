"""Per-record clipping of the binary model's gradients, summed over a batch, in closed form.

The models are stacks of Linear and ReLU layers on tabular rows, and a record's gradient of a
Linear layer is the outer product of the gradient at the layer's output (``g``) and the layer's
input (``a``): its squared norm is ``|g|^2 (|a|^2 + 1)`` with the bias (the ghost-norm
identity), and the sum of the clipped gradients is one matrix product per layer with the clip
factors folded into ``g``. No record's gradient is ever materialized: Opacus's per-sample hooks
do that and cost several times a non-private step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from federation.client.layers import logit_gradients

# Share of the clip norm's square kept for the output bias, which every record then moves alike.
BIAS_SHARE = 0.25


def check_supported(model: nn.Module) -> None:
    """Refuse a model outside the shape the closed-form gradients hold for: a Sequential of
    Linear and ReLU layers ending in one logit, each Linear layer used once (like Opacus, no
    layer may mix the records of a batch). The registry builds only these."""
    layers = list(model.children())  # a module used twice appears once
    if (
        not isinstance(model, nn.Sequential)
        or not layers
        or len(layers) != len(model)
        or not all(isinstance(m, nn.Linear | nn.ReLU) for m in layers)
        or not isinstance(layers[-1], nn.Linear)
        or layers[-1].out_features != 1
    ):
        raise ValueError(
            "DP training needs a Sequential model of Linear and ReLU layers ending in one "
            f"logit; got {type(model).__name__}"
        )


def clipped_gradient_sum(
    model: nn.Sequential, features: torch.Tensor, labels: torch.Tensor, max_grad_norm: float
) -> None:
    """Set each parameter's ``.grad`` to the sum over the batch of the records' logistic-loss
    gradients, clipped by factors that depend on the record's features, never on its label.

    A record's loss gradient is ``(p - y) J``, where ``J`` is the gradient of its logit, and
    ``|p - y| < 1``. Its output-bias entry (1 in ``J``) is scaled by ``min(1, a C)`` with
    ``a^2 = BIAS_SHARE``, the rest of ``J`` to norm at most ``sqrt(1 - a^2) C``, so the clipped
    gradient has norm at most ``C = max_grad_norm``: the sensitivity Opacus's noise is
    calibrated to, as with flat clipping. Flat clipping scales by ``C / |(p - y) J|`` instead,
    which depends on the label: under class imbalance the rare class has the large residuals,
    its gradients are the ones cut, and the model under-predicts it (the demo at its defaults:
    mean risk 14% where 21% have the outcome). Here the expected clipped gradient at the true
    risk is zero for every weight (a weighted maximum-likelihood fit), and the intercept's
    factor is the same for every record, so at convergence the training rows' mean predicted
    risk is their observed risk.
    """
    logits, linears, inputs, grads = logit_gradients(model, features)
    *hidden, output = linears
    with torch.no_grad():
        # The output layer's g is 1: its weights' entries of J are its input, and its bias's
        # entry (1) is apart.
        squared_norms = inputs[-1].square().sum(1)
        for layer, a, g in zip(hidden, inputs[:-1], grads, strict=True):
            squared_norms += g.square().sum(1) * (a.square().sum(1) + int(layer.bias is not None))
        if output.bias is not None:
            bias_factor = min(1.0, math.sqrt(BIAS_SHARE) * max_grad_norm)
            rest = math.sqrt(1 - BIAS_SHARE) * max_grad_norm
        else:
            bias_factor, rest = 0.0, max_grad_norm
        factor = (rest / (squared_norms.sqrt_() + 1e-6)).clamp_(max=1.0)
        residuals = torch.sigmoid(logits) - labels
        weight = residuals * factor
        output.weight.grad = (weight @ inputs[-1]).unsqueeze(0)
        for layer, a, g in zip(hidden, inputs[:-1], grads, strict=True):
            clipped = g * weight.unsqueeze(1)
            layer.weight.grad = clipped.T @ a
            if layer.bias is not None:
                layer.bias.grad = clipped.sum(0)
        if output.bias is not None:
            output.bias.grad = (residuals.sum() * bias_factor).reshape(1)
