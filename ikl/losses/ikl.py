"""Decoupled and Improved KL divergence (Cui et al., NeurIPS 2024, arXiv 2305.13948).

Notation (paper §3): z^m is the *target* side (teacher in KD, natural logits in AT), z^n the
*student* side (student in KD, adversarial logits in AT), Δ_jk = z_j − z_k.

    L = wmse_weight · wMSE + sce_weight · sCE                                    (paper Eq. 10)
    wMSE = 1/B · Σ_b ¼ Σ_{j,k} w_j w_k ((Δ^m − Δ^n)_{jk})²
    sCE  = −1/B · Σ_b Σ_j sg(softmax(z^m/T))_j · log softmax(z^n/T)_j

Name mapping (the paper and the official code swap α and β, PAPER.md §0.1):

    ours               paper                 official code (DKLv1)
    wmse_weight        α  (``α/4`` = 5 ↔ 20)  ``beta`` (AT) / ``BETA`` (KD)
    sce_weight         β                     ``alpha`` (AT) / ``ALPHA`` (KD)
    temperature        (sCE temperature)     ``T`` (KD); 1 in AT
    prior_temperature  τ                     ``T`` (AT) / ``T2`` (KD)
    class_wise         GI (Eq. 9)            ``GI`` (KD); always on in AT
    break_asymmetry    BA (Eq. 7)            implicit: AT never detaches, KD's teacher is frozen
    weight_power       —                     ``gamma`` (DKLv2 / GKL only)
    normalize          —                     DKLv2 reduction ``.sum()/p_n.sum()``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.losses.kl import compute_dtype, soft_cross_entropy
from ikl.losses.prior import ClassPrior


class _PairwiseSquaredSpread(torch.autograd.Function):
    """Per-sample ½(S·Σ w c² − (Σ w c)²) = ¼ Σ_jk w_j w_k (d_j − d_k)², c = d − detached weighted mean.

    A hand-written backward, ∂/∂d_j = w_j (S·c_j − Σ_k w_k c_k), keeps the saved state to two
    [B, C] tensors and the work to a handful of elementwise passes (PAPER.md §6.1).
    """

    @staticmethod
    def forward(ctx, diff: Tensor, w: Tensor) -> Tensor:  # type: ignore[override]
        total_weight = w.sum(dim=1, keepdim=True)
        weighted = w * diff
        shift = weighted.sum(dim=1, keepdim=True) / total_weight.clamp_min(torch.finfo(diff.dtype).tiny)
        centred = diff - shift
        torch.mul(w, centred, out=weighted)
        first_moment = weighted.sum(dim=1, keepdim=True)
        second_moment = (weighted * centred).sum(dim=1, keepdim=True)
        ctx.save_for_backward(centred, w, total_weight, first_moment)
        return (0.5 * (total_weight * second_moment - first_moment.square())).squeeze(1)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        centred, w, total_weight, first_moment = ctx.saved_tensors
        grad = torch.addcmul(-first_moment, centred, total_weight)
        grad.mul_(w).mul_(grad_output.unsqueeze(1))
        return grad, None


def weighted_pairwise_mse(
    student_logits: Tensor,
    target_logits: Tensor,
    weights: Tensor,
    *,
    weight_power: float = 1.0,
    normalize: bool = False,
    break_asymmetry: bool = True,
) -> Tensor:
    """¼ Σ_{j,k} w_j w_k (d_j − d_k)² with d = target − student, in O(B·C) (paper Alg. 2).

    Closed form: Σ_jk w_j w_k (d_j − d_k)² = 2 (S·Σ_j w_j d_j² − (Σ_j w_j d_j)²), S = Σ_j w_j.
    d is shifted by its detached weighted mean first; the identity holds for any shift, and the
    shift keeps the two sums from cancelling catastrophically for logits of ±1e4.

    Args:
        student_logits, target_logits: [B, C]. ``weights``: [B, C], detached here (sg(w)).
        weight_power: w ← w^γ before use (GKL's ``gamma``; no renormalisation, as DKLv2).
        normalize: divide by Σ_b Σ_jk w_j w_k (DKLv2) instead of B (DKLv1).
        break_asymmetry: if False the student's differences are detached (DKL, Theorem 1).
    """
    dtype = compute_dtype(student_logits)
    student = student_logits.to(dtype)
    if not break_asymmetry:
        student = student.detach()
    diff = target_logits.to(dtype) - student
    w = weights.detach().to(dtype)
    if weight_power != 1.0:
        w = w.pow(weight_power)
    per_sample = _PairwiseSquaredSpread.apply(diff, w)
    denominator = w.sum(dim=1).square().sum() if normalize else len(diff)
    return per_sample.sum() / denominator


def ikl_loss(
    student_logits: Tensor,
    target_logits: Tensor,
    weights: Tensor,
    *,
    wmse_weight: float,
    sce_weight: float,
    temperature: float = 1.0,
    weight_power: float = 1.0,
    normalize: bool = False,
    break_asymmetry: bool = True,
) -> Tensor:
    """IKL (paper Eq. 10): ``wmse_weight · wMSE + sce_weight · sCE``; see the module docstring.

    ``weights`` [B, C] are the per-sample weight vectors: class-prior rows gathered by label (GI)
    or any sample-wise vector such as sg(softmax(z^m/τ)). The caller decides what is detached
    beyond the stop-gradients of the formula (a teacher is frozen; in AT both sides learn).
    """
    wmse = weighted_pairwise_mse(
        student_logits,
        target_logits,
        weights,
        weight_power=weight_power,
        normalize=normalize,
        break_asymmetry=break_asymmetry,
    )
    return wmse_weight * wmse + sce_weight * soft_cross_entropy(student_logits, target_logits, temperature)


def dkl_terms(student_logits: Tensor, target_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Unweighted (wMSE, sCE) of DKL, paper Theorem 1 (Eq. 5): weights sg(s^m s^mᵀ), sg on Δ^n."""
    weights = F.softmax(target_logits.detach().to(compute_dtype(target_logits)), dim=1)
    wmse = weighted_pairwise_mse(student_logits, target_logits, weights, break_asymmetry=False)
    return wmse, soft_cross_entropy(student_logits, target_logits)


def dkl_loss(
    student_logits: Tensor, target_logits: Tensor, *, wmse_weight: float = 1.0, sce_weight: float = 1.0
) -> Tensor:
    """DKL, paper Theorem 1 (Eq. 5): ``wmse_weight · wMSE + sce_weight · sCE``.

    With both weights 1 its gradients equal those of ``kl_div(student, target)`` with respect to
    both inputs: the wMSE drives the target, the soft-label CE drives the student.
    """
    wmse, sce = dkl_terms(student_logits, target_logits)
    return wmse_weight * wmse + sce_weight * sce


class IKLLoss(nn.Module):
    """Configurable DKL/IKL/GKL loss with its class-wise prior (paper Eqs. 5, 7, 9, 10).

    ``forward(student, target, labels)`` returns the weighted terms ``{"loss_wmse", "loss_sce"}``.
    Weights are the class prior rows of the labels (``class_wise=True``, GI) or the sample-wise
    sg(softmax(target/prior_temperature)). Feed the prior with ``observe`` during an epoch and
    call ``end_epoch`` at its end (PAPER.md §0.6); the prior lives in this module's state_dict.

    The official DKLv1 KD configs use ``class_wise=False, prior_temperature=100`` ("as released");
    the paper describes GI on. See the module docstring for the α/β name mapping.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        wmse_weight: float = 1.0,
        sce_weight: float = 1.0,
        temperature: float = 1.0,
        prior_temperature: float = 1.0,
        class_wise: bool = True,
        break_asymmetry: bool = True,
        weight_power: float = 1.0,
        normalize: bool = False,
        prior_momentum: float = 1.0,
    ) -> None:
        super().__init__()
        self.wmse_weight = wmse_weight
        self.sce_weight = sce_weight
        self.temperature = temperature
        self.prior_temperature = prior_temperature
        self.class_wise = class_wise
        self.break_asymmetry = break_asymmetry
        self.weight_power = weight_power
        self.normalize = normalize
        self.prior = ClassPrior(num_classes, temperature=prior_temperature, momentum=prior_momentum)

    def sample_weights(self, target_logits: Tensor, labels: Tensor) -> Tensor:
        """[B, C] weight vectors: prior rows (GI) or sg(softmax(target/τ))."""
        if self.class_wise:
            return self.prior.weights(labels)
        return F.softmax(target_logits.detach().float() / self.prior_temperature, dim=1)

    def terms(
        self,
        student_logits: Tensor,
        target_logits: Tensor,
        labels: Tensor,
        *,
        wmse_weight: float | None = None,
        sce_weight: float | None = None,
    ) -> dict[str, Tensor]:
        """The weighted terms, optionally with other weights (the AT adversary's objective)."""
        wmse_weight = self.wmse_weight if wmse_weight is None else wmse_weight
        sce_weight = self.sce_weight if sce_weight is None else sce_weight
        terms = {"loss_sce": sce_weight * soft_cross_entropy(student_logits, target_logits, self.temperature)}
        if wmse_weight != 0:
            wmse = weighted_pairwise_mse(
                student_logits,
                target_logits,
                self.sample_weights(target_logits, labels),
                weight_power=self.weight_power,
                normalize=self.normalize,
                break_asymmetry=self.break_asymmetry,
            )
            terms["loss_wmse"] = wmse_weight * wmse
        return terms

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.terms(student_logits, target_logits, labels)

    def observe(self, target_logits: Tensor, labels: Tensor) -> None:
        """Accumulate softmax(target/τ) per class for the next epoch's prior."""
        self.prior.update(target_logits, labels)

    def end_epoch(self) -> None:
        self.prior.step()


class DKLLoss(nn.Module):
    """DKL as in Theorem 1 (``dkl_loss``), the "(b) DKL" row of paper Table 1."""

    def __init__(self, *, wmse_weight: float = 1.0, sce_weight: float = 1.0) -> None:
        super().__init__()
        self.wmse_weight = wmse_weight
        self.sce_weight = sce_weight

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        wmse, sce = dkl_terms(student_logits, target_logits)
        return {"loss_wmse": self.wmse_weight * wmse, "loss_sce": self.sce_weight * sce}
