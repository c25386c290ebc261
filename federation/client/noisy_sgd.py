"""SGD on sums of clipped per-record gradients, with Opacus's secure-mode Gaussian noise.

Each step adds Gaussian noise of std ``noise_multiplier * max_grad_norm`` to every coordinate of
the summed gradient, divides by the expected batch size and takes an SGD step: what Opacus's
``DPOptimizer`` does with ``loss_reduction="mean"``. The noise is drawn by Opacus's own sampler
in ``secure_mode`` (each value the scaled sum of four Gaussians, against the floating-point
attacks on naive samples), from the round's generator, but for many steps in one call: the noise
does not depend on the data, so drawing it ahead changes neither its distribution nor what an
observer of the released weights learns, and Opacus's per-parameter, per-step calls (six draws
each) cost more than the rest of a small model's step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

# Most noise values drawn at once (4 MB of float32; the sampler holds a few times this).
MAX_NOISE_VALUES = 1 << 20


class NoisySGD:
    """The optimizer a DP-SGD round steps: ``zero_grad``, set ``.grad`` to the clipped sum,
    ``step``."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        learning_rate: float,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        steps_ahead: int,
        generator: torch.Generator | None = None,
    ) -> None:
        self.params = list(params)
        self.noise_std = noise_multiplier * max_grad_norm
        self.scale = -learning_rate / expected_batch_size
        self.steps_ahead = max(1, steps_ahead)
        self.generator = generator
        self._noise: Iterator[tuple[torch.Tensor, ...]] = iter(())  # steps to come, per param

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients, as ``torch.optim.Optimizer.zero_grad`` does."""
        for param in self.params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.zero_()

    def step(self) -> None:
        """``param -= learning_rate * (grad + noise) / expected_batch_size`` for each parameter,
        with fresh noise at every step."""
        noise = next(self._noise, None)
        if noise is None:
            self._noise = self._draw_noise()
            noise = next(self._noise)
        with torch.no_grad():
            torch._foreach_add_(self.params, [p.grad for p in self.params], alpha=self.scale)
            torch._foreach_add_(self.params, noise)

    def _draw_noise(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """The scaled noise of the next steps (up to ``steps_ahead``), each step's a view per
        parameter into one block drawn by one call of Opacus's secure sampler."""
        sizes = [param.numel() for param in self.params]
        steps = max(1, min(self.steps_ahead, MAX_NOISE_VALUES // max(1, sum(sizes))))
        reference = torch.empty(steps, sum(sizes), dtype=self.params[0].dtype)
        block = _generate_noise(
            self.noise_std, reference, generator=self.generator, secure_mode=True
        ).mul_(self.scale)
        per_param = [
            chunk.unflatten(1, param.shape).unbind(0)
            for chunk, param in zip(block.split(sizes, dim=1), self.params, strict=True)
        ]
        return zip(*per_param, strict=True)
