"""The Linear layers' inputs and outputs of a forward pass: what closed-form per-record gradient
norms need (``training`` for the binary model, ``hazard`` for the survival model's score)."""

from __future__ import annotations

import torch
from torch import nn


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
