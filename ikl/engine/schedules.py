"""Learning-rate schedules of the official recipes, stepped once per epoch."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, MultiStepLR


def multistep(optimizer: Optimizer, *, milestones: list[int], gamma: float = 0.1) -> LRScheduler:
    """mdistiller: lr × gamma^(#stages passed); epoch ``e`` (1-based) uses the decayed lr once e > stage."""
    return MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)


def official_cosine(optimizer: Optimizer, *, epochs: int) -> LRScheduler:
    """DKL AT scripts: lr(e) = lr₀·½(1 + cos(π·e/(E+1))) for epochs e = 1..E (PAPER.md §2.1)."""
    return LambdaLR(optimizer, lambda done: 0.5 * (1 + math.cos(math.pi * (done + 1) / (epochs + 1))))


def constant(optimizer: Optimizer) -> LRScheduler:
    return LambdaLR(optimizer, lambda done: 1.0)
