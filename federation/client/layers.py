"""The Linear layers' inputs and outputs of a forward pass: what closed-form per-record gradient
norms need (``clipping`` for the binary model, ``hazard`` for the survival model's score)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def forward_through_linears(
    model: nn.Sequential, features: torch.Tensor
) -> tuple[torch.Tensor, list[nn.Linear], list[torch.Tensor], list[torch.Tensor]]:
    """The model's output, with each Linear layer's input and output on the way."""
    linears, inputs, outputs = [], [], []
    hidden = features
    for layer in model:
        if isinstance(layer, nn.Linear):
            linears.append(layer)
            inputs.append(hidden)
            hidden = layer(hidden)
            outputs.append(hidden)
        else:
            hidden = layer(hidden)
    return hidden, linears, inputs, outputs


def logit_gradients(
    model: nn.Sequential, features: torch.Tensor
) -> tuple[torch.Tensor, list[nn.Linear], list[torch.Tensor], list[torch.Tensor]]:
    """The records' logits, each Linear layer with its input, and the gradient of each record's
    logit at the output of every Linear layer but the last (there it is 1).

    Worked out by hand for a stack of Linear and ReLU layers (``clipping.check_supported``), with
    no autograd graph: at these sizes building and walking the graph costs more than the
    arithmetic. Going back through a Linear layer multiplies by its weight; through a ReLU, zeroes
    the entries whose input to it was not positive (torch's own ReLU gradient)."""
    trace: list[tuple[nn.Module, torch.Tensor]] = []
    hidden = features
    with torch.no_grad():
        for layer in model:
            trace.append((layer, hidden))
            if isinstance(layer, nn.Linear):
                hidden = F.linear(hidden, layer.weight, layer.bias)
            else:
                hidden = hidden.relu()
        grads: list[torch.Tensor] = []
        grad = torch.ones_like(hidden)  # of each record's logit at the last layer's output
        # Back through every layer but the first (its input's gradient is of no use).
        for (layer, a), (before, _) in zip(reversed(trace[1:]), reversed(trace[:-1]), strict=True):
            if isinstance(layer, nn.Linear):
                grad = grad @ layer.weight
            else:  # what autograd runs for a ReLU, without a float copy of a boolean mask
                grad = torch.ops.aten.threshold_backward(grad, a, 0.0)
            if isinstance(before, nn.Linear):
                grads.append(grad)
    grads.reverse()
    linears = [layer for layer, _ in trace if isinstance(layer, nn.Linear)]
    inputs = [a for layer, a in trace if isinstance(layer, nn.Linear)]
    return hidden.squeeze(-1), linears, inputs, grads
