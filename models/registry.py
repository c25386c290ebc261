"""Build a risk model by name; every model maps features to one logit."""

from collections.abc import Sequence

from torch import nn

from models import MODEL_NAMES
from models.survival import DiscreteTimeHazard


def build_model(
    name: str, n_features: int, hidden: Sequence[int] = (), cuts: Sequence[float] = ()
) -> nn.Module:
    """Return a fresh model with deterministic initial weights for ``name``; with ``cuts`` (a
    survival study's interval ends, ``models.survival``), the discrete-time hazard model whose
    risk score is that model without its output bias (the baseline logits take its place).

    No BatchNorm anywhere: Opacus cannot compute per-record gradients through it.
    """
    bias = not cuts
    if name == "logistic":
        model = nn.Sequential(nn.Linear(n_features, 1, bias=bias))
    elif name == "mlp":
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden or (32,):
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1, bias=bias))
        model = nn.Sequential(*layers)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return DiscreteTimeHazard(model, cuts) if cuts else model
