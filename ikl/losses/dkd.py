"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), the DKD baseline of paper Tables 4, 13, 14."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.losses.kl import compute_dtype


def _binary_log_probs(log_probs: Tensor, target_mask: Tensor) -> Tensor:
    """[B, 2] log-probabilities of (target class, all other classes), via logsumexp."""
    log_target = log_probs.masked_fill(~target_mask, float("-inf")).logsumexp(dim=1)
    log_other = log_probs.masked_fill(target_mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([log_target, log_other], dim=1)


def _kl_from_log_probs(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Σ p (log p − log q) per row, with 0·log 0 = 0 where p = 0 (masked entries).

    Zero-probability entries are replaced before the product so that no −inf reaches autograd.
    """
    p = log_p.exp()
    support = p > 0
    zeros = torch.zeros_like(p)
    return (p * (torch.where(support, log_p, zeros) - torch.where(support, log_q, zeros))).sum(dim=1)


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """α·TCKD + β·NCKD, each T²-scaled and averaged over the batch (DKD paper Eq. 7).

    TCKD is the binary KL over (target, non-target) mass; NCKD the KL among non-target classes.
    Matches mdistiller's ``dkd_loss``; its ``−1000·gt`` masking is computed here as an exact
    −inf mask with logsumexp, which is equal to float precision and stable for large logits.
    The warm-up factor min(epoch/warmup, 1) is the caller's.
    """
    dtype = compute_dtype(student_logits)
    target_mask = F.one_hot(labels, student_logits.shape[1]).bool()
    log_ps = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    tckd = _kl_from_log_probs(_binary_log_probs(log_pt, target_mask), _binary_log_probs(log_ps, target_mask))
    masked_s = F.log_softmax((student_logits.to(dtype) / temperature).masked_fill(target_mask, float("-inf")), dim=1)
    masked_t = F.log_softmax((teacher_logits.to(dtype) / temperature).masked_fill(target_mask, float("-inf")), dim=1)
    nckd = _kl_from_log_probs(masked_t, masked_s)
    scale = temperature**2
    return scale * (alpha * tckd.mean() + beta * nckd.mean())


class DKDLoss(nn.Module):
    """DKD with mdistiller's names: ``alpha`` (TCKD), ``beta`` (NCKD), ``temperature`` (T)."""

    def __init__(self, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.temperature = temperature

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        loss = dkd_loss(
            student_logits, target_logits, labels, alpha=self.alpha, beta=self.beta, temperature=self.temperature
        )
        return {"loss_dkd": loss}
