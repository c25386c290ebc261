"""Build a risk model by name; every model maps features to one logit."""

from collections.abc import Sequence

from torch import nn

from models import MODEL_NAMES


def build_model(name: str, n_features: int, hidden: Sequence[int] = ()) -> nn.Module:
    """Return a fresh model with deterministic initial weights for ``name``.

    No BatchNorm anywhere: Opacus cannot compute per-record gradients through it.
    """
    if name == "logistic":
        model = nn.Sequential(nn.Linear(n_features, 1))
    elif name == "mlp":
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden or (32,):
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        model = nn.Sequential(*layers)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return model
