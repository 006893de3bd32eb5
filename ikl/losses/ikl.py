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

Every loss here is one fused autograd node (``ikl.losses.fused``): both terms and their
closed-form gradients in one pass over [chunk, C] blocks of rows, never a B×C×C tensor, peak memory
below that of the plain ``kl_div`` formula. ``chunk_size`` (rows) bounds the temporaries; the
default keeps a chunk near 2^18 values on a CPU.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import Tensor, nn

from ikl.losses.fused import IKLSpec, ikl_terms
from ikl.losses.prior import ClassPrior


def weighted_pairwise_mse(
    student_logits: Tensor,
    target_logits: Tensor,
    weights: Tensor,
    *,
    weight_power: float = 1.0,
    normalize: bool = False,
    break_asymmetry: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """¼ Σ_{j,k} w_j w_k (d_j − d_k)² with d = target − student, in O(B·C) (paper Alg. 2).

    Closed form: Σ_jk w_j w_k (d_j − d_k)² = 2 (S·Σ_j w_j d_j² − (Σ_j w_j d_j)²), S = Σ_j w_j.
    d is shifted by its detached weighted mean first; the identity holds for any shift, and the
    shift keeps the two sums from cancelling catastrophically for logits of ±1e4. Computed by the
    fused node of ``ikl.losses.fused`` (gradients in closed form, never a B×C×C tensor).

    Args:
        student_logits, target_logits: [B, C]. ``weights``: [B, C], detached here (sg(w)).
        weight_power: w ← w^γ before use (GKL's ``gamma``; no renormalisation, as DKLv2).
        normalize: divide by Σ_b Σ_jk w_j w_k (DKLv2) instead of B (DKLv1).
        break_asymmetry: if False the student's differences are detached (DKL, Theorem 1).
        chunk_size: rows per chunk of the computation (None: about 2^18 values a chunk on a CPU);
            temporaries are [chunk, C], the result does not depend on it.
    """
    spec = IKLSpec(
        wmse_weight=1.0,
        sce_weight=0.0,
        weight_power=weight_power,
        normalize=normalize,
        break_asymmetry=break_asymmetry,
        sce=False,
    )
    (wmse,) = ikl_terms(student_logits, target_logits, spec, weights=weights, chunk_size=chunk_size)
    return wmse


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
    chunk_size: int | None = None,
) -> Tensor:
    """IKL (paper Eq. 10): ``wmse_weight · wMSE + sce_weight · sCE``; see the module docstring.

    ``weights`` [B, C] are the per-sample weight vectors: class-prior rows gathered by label (GI)
    or any sample-wise vector such as sg(softmax(z^m/τ)). The caller decides what is detached
    beyond the stop-gradients of the formula (a teacher is frozen; in AT both sides learn).

    Both terms come from one fused autograd node (``ikl.losses.fused``): one softmax of each input
    serves the sCE's value and gradient, the gradients are written in closed form, and the
    temporaries are [chunk, C] (``chunk_size`` rows, None: about 2^18 values a chunk on a CPU).
    """
    spec = IKLSpec(
        wmse_weight=wmse_weight,
        sce_weight=sce_weight,
        temperature=temperature,
        weight_power=weight_power,
        normalize=normalize,
        break_asymmetry=break_asymmetry,
    )
    wmse, sce = ikl_terms(student_logits, target_logits, spec, weights=weights, chunk_size=chunk_size)
    return wmse + sce


def dkl_terms(student_logits: Tensor, target_logits: Tensor, *, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Unweighted (wMSE, sCE) of DKL, paper Theorem 1 (Eq. 5): weights sg(s^m s^mᵀ), sg on Δ^n.

    One fused node; the target's softmax serves as the sCE's soft labels and the wMSE's weights.
    """
    spec = IKLSpec(wmse_weight=1.0, sce_weight=1.0, break_asymmetry=False, weight_temperature=1.0)
    wmse, sce = ikl_terms(student_logits, target_logits, spec, chunk_size=chunk_size)
    return wmse, sce


def dkl_loss(
    student_logits: Tensor,
    target_logits: Tensor,
    *,
    wmse_weight: float = 1.0,
    sce_weight: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """DKL, paper Theorem 1 (Eq. 5): ``wmse_weight · wMSE + sce_weight · sCE``.

    With both weights 1 its gradients equal those of ``kl_div(student, target)`` with respect to
    both inputs: the wMSE drives the target, the soft-label CE drives the student.
    """
    spec = IKLSpec(wmse_weight=wmse_weight, sce_weight=sce_weight, break_asymmetry=False, weight_temperature=1.0)
    wmse, sce = ikl_terms(student_logits, target_logits, spec, chunk_size=chunk_size)
    return wmse + sce


_spec = functools.lru_cache(maxsize=256)(IKLSpec)  # one frozen spec per configuration, built once


class IKLLoss(nn.Module):
    """Configurable DKL/IKL/GKL loss with its class-wise prior (paper Eqs. 5, 7, 9, 10).

    ``forward(student, target, labels)`` returns the weighted terms ``{"loss_sce", "loss_wmse"}``
    (``loss_wmse`` only when its weight is not 0), both from one fused autograd node. Weights are
    the class prior rows of the labels (``class_wise=True``, GI) or the sample-wise
    sg(softmax(target/prior_temperature)), computed chunk by chunk inside the node. Feed the prior
    with ``observe`` during an epoch and call ``end_epoch`` at its end (PAPER.md §0.6); the prior
    lives in this module's state_dict.

    With ``class_wise=False`` there is no prior at all (``self.prior`` is None): ``observe`` and
    ``end_epoch`` do nothing and no C×C memory exists. With GI on, the prior is a C×C table
    (12·C² bytes once built, allocated lazily; see ``ClassPrior``): inherent to GI, and refused
    with one ``ConfigError`` line when it cannot fit.

    The official DKLv1 KD configs use ``class_wise=False, prior_temperature=100`` ("as released");
    the paper describes GI on. See the module docstring for the α/β name mapping.
    ``chunk_size`` (rows) bounds the temporaries of one call to [chunk, C] (None: automatic).
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
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if prior_temperature <= 0:
            raise ValueError(f"prior temperature must be > 0, got {prior_temperature}")
        self.num_classes = num_classes
        self.wmse_weight = wmse_weight
        self.sce_weight = sce_weight
        self.temperature = temperature
        self.prior_temperature = prior_temperature
        self.class_wise = class_wise
        self.break_asymmetry = break_asymmetry
        self.weight_power = weight_power
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.prior: ClassPrior | None = (
            ClassPrior(num_classes, temperature=prior_temperature, momentum=prior_momentum) if class_wise else None
        )

    def sample_weights(self, target_logits: Tensor, labels: Tensor) -> Tensor:
        """[B, C] weight vectors: prior rows (GI) or sg(softmax(target/τ)). ``terms`` does not
        build this tensor; it computes the same weights chunk by chunk."""
        if self.prior is not None:
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
        prior = self.prior
        spec = _spec(
            wmse_weight,
            sce_weight,
            self.temperature,
            self.weight_power,
            self.normalize,
            self.break_asymmetry,
            None if prior is not None else self.prior_temperature,
            wmse_weight != 0,
        )
        table = prior.table() if prior is not None else None
        values = ikl_terms(
            student_logits,
            target_logits,
            spec,
            table=table,
            labels=labels if table is not None else None,
            chunk_size=self.chunk_size,
        )
        if spec.wmse:
            wmse, sce = values
            return {"loss_sce": sce, "loss_wmse": wmse}
        return {"loss_sce": values[0]}

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        return self.terms(student_logits, target_logits, labels)

    def observe(self, target_logits: Tensor, labels: Tensor) -> None:
        """Accumulate softmax(target/τ) per class for the next epoch's prior (nothing with GI off)."""
        if self.prior is not None:
            self.prior.update(target_logits, labels)

    def end_epoch(self) -> None:
        if self.prior is not None:
            self.prior.step()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        if self.prior is None:  # checkpoints of earlier versions kept an unused prior with GI off
            for key in [k for k in state_dict if k.startswith(prefix + "prior.")]:
                del state_dict[key]
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class DKLLoss(nn.Module):
    """DKL as in Theorem 1 (``dkl_loss``), the "(b) DKL" row of paper Table 1."""

    def __init__(self, *, wmse_weight: float = 1.0, sce_weight: float = 1.0, chunk_size: int | None = None) -> None:
        super().__init__()
        self.wmse_weight = wmse_weight
        self.sce_weight = sce_weight
        self.chunk_size = chunk_size

    def forward(self, student_logits: Tensor, target_logits: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        spec = IKLSpec(
            wmse_weight=self.wmse_weight, sce_weight=self.sce_weight, break_asymmetry=False, weight_temperature=1.0
        )
        wmse, sce = ikl_terms(student_logits, target_logits, spec, chunk_size=self.chunk_size)
        return {"loss_wmse": wmse, "loss_sce": sce}
