"""KL divergence, Hinton KD and the TRADES robust term.

All functions take logits of shape [B, C], compute in float32 (float64 stays float64) even when
the inputs are half precision, and return a scalar averaged over the batch (``batchmean``), so a
partial last batch is averaged over its own size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.losses.fused import IKLSpec, ikl_terms, kl_div_fused


def compute_dtype(tensor: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 inputs."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    return F.log_softmax(logits.to(compute_dtype(logits)) / temperature, dim=1)


def kl_div(
    student_logits: Tensor, target_logits: Tensor, temperature: float = 1.0, *, chunk_size: int | None = None
) -> Tensor:
    """KL(softmax(target/T) ‖ softmax(student/T)), mean over the batch.

    Gradient flows into both inputs (detach the target yourself for a frozen teacher).
    Uses log-probabilities only, so logits of ±1e4 stay finite.

    ``chunk_size=None`` is the plain autograd formula (the reference the IKL benchmarks compare
    against); a number of rows selects the fused node of ``ikl.losses.fused`` instead: same value
    and gradients, [chunk, C] temporaries, for vocabulary-sized C.
    """
    if chunk_size is not None:
        return kl_div_fused(student_logits, target_logits, temperature, chunk_size)
    log_p_target = _log_probs(target_logits, temperature)
    log_p_student = _log_probs(student_logits, temperature)
    pointwise = log_p_target.exp() * (log_p_target - log_p_student)
    return pointwise.sum(dim=1).mean()


def soft_cross_entropy(
    student_logits: Tensor, target_logits: Tensor, temperature: float = 1.0, *, chunk_size: int | None = None
) -> Tensor:
    """−Σ_j sg(softmax(target/T))_j · log softmax(student/T)_j, mean over the batch.

    The soft-label cross-entropy term of DKL/IKL (paper Eq. 5, second term). The target side is
    always detached. No T² factor, as in the official code (PAPER.md §0.7). One fused node
    (``ikl.losses.fused``), temporaries of ``chunk_size`` rows (None: automatic).
    """
    spec = IKLSpec(wmse_weight=0.0, sce_weight=1.0, temperature=temperature, wmse=False)
    (sce,) = ikl_terms(student_logits, target_logits.detach(), spec, chunk_size=chunk_size)
    return sce


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton et al. 2015 knowledge distillation: T²·KL(s_t^T ‖ s_s^T), as mdistiller's ``kd_loss``."""
    return kl_div(student_logits, teacher_logits, temperature) * temperature**2


def trades_robust_loss(adv_logits: Tensor, natural_logits: Tensor) -> Tensor:
    """TRADES robust term KL(softmax(z_nat) ‖ softmax(z_adv)), batchmean, gradient into both.

    Zhang et al., ICML 2019, Eq. 5; multiply by β (official script: 6.0, DKL repo: 9.0).
    """
    return kl_div(adv_logits, natural_logits)


class KLLoss(nn.Module):
    """``kl_weight · KL(softmax(target/T) ‖ softmax(student/T))``: the KL baseline of paper Table 1
    and, with ``kl_weight = β``, the TRADES robust term (official ``--beta``)."""

    def __init__(self, *, kl_weight: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.kl_weight = kl_weight
        self.temperature = temperature

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        return {"loss_kl": self.kl_weight * kl_div(student_logits, target_logits, self.temperature)}


class KDLoss(nn.Module):
    """Hinton KD term ``kd_weight · T² · KL`` (mdistiller ``KD.LOSS.KD_WEIGHT``=0.9, ``KD.TEMPERATURE``=4)."""

    def __init__(self, *, kd_weight: float = 0.9, temperature: float = 4.0) -> None:
        super().__init__()
        self.kd_weight = kd_weight
        self.temperature = temperature

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        return {"loss_kd": self.kd_weight * kd_loss(student_logits, target_logits, self.temperature)}
