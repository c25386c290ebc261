"""A risk model as ONNX, for sites that score with other tools (any ONNX runtime, no torch).

The graph takes the encoded feature vector (``features``: rows x inputs, float32, in the model
card's feature order) and gives ``logit`` and ``risk`` (its sigmoid) per row. It is exported with
torch's TorchScript exporter (``dynamo=False``), which needs only the ``onnx`` package; the newer
exporter would need ``onnxscript`` as well.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

ONNX_OPSET = 17
ONNX_INPUT = "features"
ONNX_OUTPUTS = ("logit", "risk")


class _LogitAndRisk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.model(x).squeeze(-1)
        return logit, torch.sigmoid(logit)


def onnx_bytes(model: nn.Module, n_features: int) -> bytes:
    """The serialized ONNX model of ``model`` (in eval mode, as it scores)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter announces its own deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            _LogitAndRisk(model).eval(),
            (torch.zeros(1, n_features),),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes={name: {0: "rows"} for name in (ONNX_INPUT, *ONNX_OUTPUTS)},
        )
    return buffer.getvalue()
