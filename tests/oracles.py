"""Naive reference implementations, kept in tests only: they materialise B×C×C tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_wmse(
    student: Tensor,
    target: Tensor,
    weights: Tensor,
    *,
    weight_power: float = 1.0,
    normalize: bool = False,
    break_asymmetry: bool = True,
) -> Tensor:
    """¼ Σ_jk w_j w_k ((Δ^m − Δ^n)_jk)², summed over the batch / B (or / Σ w_j w_k), as the official code."""
    if not break_asymmetry:
        student = student.detach()
    w = weights.detach().pow(weight_power)
    pair_weights = w.unsqueeze(2) * w.unsqueeze(1)  # [B, C, C]
    delta_target = target.unsqueeze(2) - target.unsqueeze(1)
    delta_student = student.unsqueeze(2) - student.unsqueeze(1)
    total = 0.25 * (pair_weights * (delta_target - delta_student) ** 2).sum()
    return total / (pair_weights.sum() if normalize else len(student))


def soft_ce(student: Tensor, target: Tensor, temperature: float = 1.0) -> Tensor:
    p = F.softmax(target.detach() / temperature, dim=1)
    return -(p * F.log_softmax(student / temperature, dim=1)).sum(1).mean()


def pairwise_ikl(student, target, weights, *, wmse_weight, sce_weight, temperature=1.0, **flags) -> Tensor:
    return wmse_weight * pairwise_wmse(student, target, weights, **flags) + sce_weight * soft_ce(
        student, target, temperature
    )


def mdistiller_dkd(student: Tensor, teacher: Tensor, labels: Tensor, alpha: float, beta: float, t: float) -> Tensor:
    """DKD written the way mdistiller computes it (−1000 masking, plain log of summed probs)."""
    gt = F.one_hot(labels, student.shape[1]).to(student.dtype)
    other = 1 - gt
    ps, pt = F.softmax(student / t, 1), F.softmax(teacher / t, 1)
    bs = torch.stack([(ps * gt).sum(1), (ps * other).sum(1)], 1)
    bt = torch.stack([(pt * gt).sum(1), (pt * other).sum(1)], 1)
    tckd = F.kl_div(torch.log(bs), bt, reduction="sum") * t**2 / len(labels)
    pt2 = F.softmax(teacher / t - 1000.0 * gt, 1)
    log_ps2 = F.log_softmax(student / t - 1000.0 * gt, 1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * t**2 / len(labels)
    return alpha * tckd + beta * nckd
