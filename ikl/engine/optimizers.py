"""Optimizers beyond ``torch.optim.SGD`` that the recipes name, built from a parameter iterable.

The configs build optimizers as ``instantiate(cfg.optimizer)(params=model.parameters())``, so a
factory here gets the parameters without their names. timm's recipes (``create_optimizer_v2``
with ``filter_bias_and_bn=True``) exempt biases and normalisation weights from weight decay; those
are exactly the parameters with ``ndim <= 1``, which is the rule used here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch.optim import Optimizer


def decay_groups(params: Iterable[torch.nn.Parameter] | Iterable[dict], weight_decay: float) -> list[dict]:
    """Each group split in two: ``ndim > 1`` tensors with the group's weight decay (default
    ``weight_decay``), the rest (biases, norms) with 0. ``params``: parameters or parameter groups."""
    items = list(params)
    groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    out = []
    for group in groups:
        options = {k: v for k, v in group.items() if k not in ("params", "weight_decay")}
        trainable = [p for p in group["params"] if p.requires_grad]
        out.append({**options, "params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0})
        out.append(
            {
                **options,
                "params": [p for p in trainable if p.ndim > 1],
                "weight_decay": group.get("weight_decay", weight_decay),
            }
        )
    return [group for group in out if group["params"]]


def lamb(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.02,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-6,
    max_grad_norm: float | None = 1.0,
    decay_1d: bool = False,
) -> Optimizer:
    """LAMB (You et al. 2020) as ``timm.optim.Lamb`` (timm's defaults: global gradient-norm clip 1.0,
    bias correction, no trust-ratio clipping), weight decay on ``ndim > 1`` parameters only unless
    ``decay_1d`` (timm's ``filter_bias_and_bn``). The optimizer of timm's RSB A1/A2 recipes."""
    from timm.optim import Lamb

    if decay_1d:
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
    else:
        groups = decay_groups(params, weight_decay)
    return Lamb(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, max_grad_norm=max_grad_norm)
