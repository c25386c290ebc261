"""DP-SGD's per-record gradients of the discrete-time hazard model (``models.survival``).

A record's loss is its own sum of interval cross-entropies, so its gradient is its own: with
``r_k = sigmoid(s + b_k) - y_k`` on the intervals it is at risk in (0 elsewhere) and ``J`` the
gradient of its risk score ``s``, the gradient is ``(sum_k r_k) J`` for the score's weights and
``r`` for the baseline logits. Its squared norm is ``(sum_k r_k)^2 |J|^2 + |r|^2``, with
``|J|^2`` from each Linear layer's input ``a`` and output gradient ``g`` as
``|g|^2 (|a|^2 + 1 if the layer has a bias)`` (the closed form ``training`` uses), so every record's
gradient is clipped to norm ``C = max_grad_norm`` exactly as Opacus's per-sample clipping
clips it (``min(1, C / norm)``), without materializing the per-record gradients.

Removing a record removes its clipped term from the batch's sum and changes no other record's:
the sensitivity of the sum is ``C``, what the noise is calibrated to. A Cox partial likelihood
would not allow this (a record sits in the risk set of every earlier event, so its removal
changes the others' terms), which is why survival studies use this model under DP.

Unlike the binary model's label-independent clipping (``training.clipped_gradient_sum``), the
clip factor here depends on the record's time and event: records with long follow-up and large
residuals are clipped most, which can bias the baseline hazard (not the ranking of risks the
C-index measures) at small clip norms.
"""

from __future__ import annotations

import torch

from federation.client.layers import forward_through_linears
from models.survival import DiscreteTimeHazard, hazard_loss, interval_targets


def hazard_gradient_sum(
    model: DiscreteTimeHazard, features: torch.Tensor, outcome: torch.Tensor, max_grad_norm: float
) -> torch.Tensor:
    """Set each parameter's ``.grad`` to the sum over the batch of the records' gradients, each
    clipped to norm ``max_grad_norm``; return the records' clip factors."""
    scores, linears, inputs, outputs = forward_through_linears(model.score, features)
    score_grads = torch.autograd.grad(scores.sum(), outputs)
    at_risk, happened = interval_targets(outcome, model.cuts)
    with torch.no_grad():
        hazards = torch.sigmoid(scores.detach() + model.baseline)
        residuals = (hazards - happened) * at_risk
        total = residuals.sum(1)
        score_norms = sum(
            g.square().sum(1) * (a.square().sum(1) + int(layer.bias is not None))
            for layer, a, g in zip(linears, inputs, score_grads, strict=True)
        )
        norms = (total.square() * score_norms + residuals.square().sum(1)).sqrt()
        factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        weight = (total * factor).unsqueeze(1)
        for layer, a, g in zip(linears, inputs, score_grads, strict=True):
            clipped = g * weight
            layer.weight.grad = clipped.T @ a
            if layer.bias is not None:
                layer.bias.grad = clipped.sum(0)
        model.baseline.grad = (residuals * factor.unsqueeze(1)).sum(0)
    return factor


def mean_hazard_loss(
    model: DiscreteTimeHazard, features: torch.Tensor, outcome: torch.Tensor
) -> torch.Tensor:
    """The batch's mean per-record loss (non-private training)."""
    return hazard_loss(model, features, outcome).mean()
