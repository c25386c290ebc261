"""Risk-prediction models behind one small registry (``models.registry.build_model``).

The names live here so that reading a study spec does not import torch.
"""

MODEL_NAMES = ("logistic", "mlp")
