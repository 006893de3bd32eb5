"""Small building blocks shared by the model zoo.

* :class:`InputNormalization` lets a robustness model take inputs in [0, 1] and standardise them
  itself (the contract AutoAttack expects, ``fra31/auto-attack`` README) while keeping the
  published checkpoints' ``state_dict`` keys: its mean and std are *non-persistent* buffers, so
  they follow ``.to(device)`` but never appear in ``state_dict()``.
* :func:`init_conv_fan_out_` is the He initialisation used by the mdistiller and TRADES/AWP
  model files, written either as ``normal_(0, sqrt(2 / (k*k*out_channels)))`` or as
  ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` (the same distribution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

Normalize = tuple[Sequence[float] | float, Sequence[float] | float]


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, stored in non-persistent buffers."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        stds = [std] if isinstance(std, (int, float)) else list(std)
        if min(stds) <= 0:
            raise ValueError(f"normalize std must be positive, got {std}")
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(stds, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def build_input_norm(normalize: Normalize | None) -> nn.Module:
    """``nn.Identity`` for ``None``, else an :class:`InputNormalization` from ``(mean, std)``."""
    if normalize is None:
        return nn.Identity()
    if len(normalize) != 2:
        raise ValueError(f"normalize must be a (mean, std) pair or None, got {normalize!r}")
    return InputNormalization(*normalize)


def init_conv_fan_out_(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights, zero conv biases, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
