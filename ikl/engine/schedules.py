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


def official_lt_cosine(optimizer: Optimizer, *, epochs: int, warmup_epochs: int = 10) -> LRScheduler:
    """The official ImageNet-LT script (``imagenetlt_distill_dkl.py`` ``adjust_learning_rate``, from
    PaCo): epoch ``e`` (0-based) uses lr₀·(e + 1)/W while e < W, then
    lr₀·½(1 + cos(π·(e − W + 1)/(E − W + 1))), W = ``warmup_epochs`` (default 10, the script's)."""

    def lr(done: int) -> float:
        if done < warmup_epochs:
            return (done + 1) / warmup_epochs
        return 0.5 * (1 + math.cos(math.pi * (done - warmup_epochs + 1) / (epochs - warmup_epochs + 1)))

    return LambdaLR(optimizer, lr)


def trades_cosine(optimizer: Optimizer, *, epochs: int) -> LRScheduler:
    """The official TRADES script of the DKL repository (``train_trades_cifar.py``
    ``adjust_learning_rate_cosine``): lr(e) = lr₀·½(1 + cos(π·(e − 1)/E)) for epochs e = 1..E, so the
    first epoch runs at lr₀ (the IKL-AT scripts' :func:`official_cosine` has π·e/(E + 1))."""
    return LambdaLR(optimizer, lambda done: 0.5 * (1 + math.cos(math.pi * done / epochs)))


def warmup_cosine(
    optimizer: Optimizer, *, epochs: int, warmup_epochs: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0
) -> LRScheduler:
    """timm's ``CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_t=warmup_epochs,
    warmup_lr_init=warmup_lr)`` stepped once per epoch (its default ``t_in_epochs``, no warm-up prefix,
    one cycle), as timm's ``train.py`` runs it: epoch ``t`` (0-based) uses
    ``warmup_lr + t·(lr₀ − warmup_lr)/warmup_epochs`` while ``t < warmup_epochs``, then
    ``min_lr + ½(lr₀ − min_lr)(1 + cos(π·t/epochs))``. ``min_lr`` and ``warmup_lr`` are absolute.
    """

    def factor(base: float):
        def lr(done: int) -> float:
            if done < warmup_epochs:
                value = warmup_lr + done * (base - warmup_lr) / warmup_epochs
            elif done < epochs:
                value = min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * done / epochs))
            else:
                value = min_lr
            return value / base

        return lr

    return LambdaLR(optimizer, [factor(group["lr"]) for group in optimizer.param_groups])


def constant(optimizer: Optimizer) -> LRScheduler:
    return LambdaLR(optimizer, lambda done: 1.0)
