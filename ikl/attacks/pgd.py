"""L∞ projected gradient ascent (PGD) and the objectives it maximises.

The training adversary of the official DKL/TRADES code (``perturb_input`` in
``DKLv1/Adv-training-dkl/train_dkl_cifar100.py``, PAPER.md §1.4) and the PGD-k / CW-k evaluation of
paper Table 11 are one loop here; they differ only in the start point and the objective:

* start ``"normal"``: x + 0.001·N(0, 1), *not* clamped before the first step (TRADES/DKL training);
* start ``"uniform"``: x + U(−ε, ε), clamped to [0, 1] (Madry et al.; the PGD-20/CW-20 evaluation).

Every step is x ← clip_[0,1](Π_ε(x + η·sign ∇_x L)). Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so no parameter ``.grad`` is ever written;
the model runs in eval mode (each module's previous mode is restored afterwards) and, by default, in
float32 with autocast disabled whatever the caller's autocast state, as the official code's float32
adversary. ``pgd_linf(..., autocast=True)`` instead runs the model's forward and backward under the
caller's autocast (the IKL-AT training adversary's ``attack.precision=amp``); the objective, the iterate,
the ε-projection and the result stay float32 either way (at least float32: a float64 model and input
stay float64 throughout, objectives included). Evaluation never passes ``autocast=True``.

An objective is a callable ``objective(adv_logits) -> scalar`` built by one of the factories below.
Sign-gradient ascent is invariant to a positive rescaling of the objective, so sum and mean
reductions give the same attack; the factories use sums (no gradient underflow for tiny batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.losses import IKLLoss, kl_div

Objective = Callable[[Tensor], Tensor]
RandomStart = Literal["normal", "uniform"] | None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; restore each module's own flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def batch_stats_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Train mode with BatchNorm normalising by the batch's statistics and *not* updating its running
    statistics (DM-AT/TRADES ``model.train(); track_bn_stats(model, False)``); restored on exit."""
    flags = [(module, module.training) for module in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    model.train()
    for module in norms:
        module.track_running_stats = False
    try:
        yield model
    finally:
        for module, track in zip(norms, tracking, strict=True):
            module.track_running_stats = track
        for module, training in flags:
            module.training = training


ATTACK_MODES = {"eval": eval_mode, "batch_stats": batch_stats_mode}


def adversary_autocast(device_type: str, autocast: bool) -> AbstractContextManager:
    """The precision of an adversary's forwards: the caller's autocast if ``autocast``, else float32.

    ``autocast=False`` disables autocast (the official code's float32 adversary; evaluation).
    ``autocast=True`` leaves the caller's autocast state as it is (bf16/fp16 convolutions under
    ``trainer.amp``; float32 when the caller runs without autocast).
    """
    return nullcontext() if autocast else torch.autocast(device_type, enabled=False)


def at_least_float32(logits: Tensor) -> Tensor:
    """``logits`` in float32 when they are in a reduced precision (bf16/fp16); float64 stays float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def float32_objective(objective: Objective, logits: Tensor) -> Tensor:
    """``objective`` on float32 logits with autocast off, so a reduced-precision forward only changes
    the logits, never the loss arithmetic (float64 logits stay float64)."""
    with torch.autocast(logits.device.type, enabled=False):
        return objective(at_least_float32(logits))


def ce_objective(labels: Tensor) -> Objective:
    """Cross-entropy to the true labels, summed over the batch (PGD of Madry et al.; TRADES eval)."""

    def objective(logits: Tensor) -> Tensor:
        return F.cross_entropy(at_least_float32(logits), labels, reduction="sum")

    return objective


def cw_objective(labels: Tensor, kappa: float = 0.0) -> Objective:
    """Carlini–Wagner margin, summed: Σ_b −max(z_y − max_{j≠y} z_j + κ, 0).

    As the ``cwloss`` of the TRADES/AWP/CAT evaluation scripts: ascent raises the best non-target
    logit over the target logit until the margin exceeds κ, then that sample's gradient is zero and
    it stays where it is. κ only matters for how far past the boundary a sample is pushed, so the
    robust accuracy of CW-k does not depend on it (those scripts use ``confidence=50``).
    """

    def objective(logits: Tensor) -> Tensor:
        logits = at_least_float32(logits)
        target = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return -(target - others.amax(dim=1) + kappa).clamp_min(0).sum()

    return objective


def trades_objective(natural_logits: Tensor) -> Objective:
    """KL(softmax(z_nat) ‖ softmax(z_adv)) with sum reduction: the TRADES adversary (official
    ``criterion_kl = nn.KLDivLoss(size_average=False)``, PAPER.md §1.2). ``natural_logits`` are fixed."""
    natural = natural_logits.detach()

    def objective(logits: Tensor) -> Tensor:
        return kl_div(logits, natural) * len(logits)

    return objective


def ikl_objective(
    criterion: IKLLoss,
    natural_logits: Tensor,
    labels: Tensor,
    wmse_weight: float,
    sce_weight: float,
) -> Objective:
    """The IKL-AT adversary: Σ of ``criterion.terms(adv, nat, labels, wmse_weight=, sce_weight=)``.

    Official ``perturb_input`` maximises ``dkl_loss(z_nat, z_adv, W, alpha=1, beta=β_adv)`` with
    class-wise weights W, i.e. our ``sce_weight=1`` and ``wmse_weight=1`` on CIFAR-100, ``0`` on
    CIFAR-10 (PAPER.md §0.5, §1.4), not the training weights. The natural logits are fixed: the
    official code recomputes ``model(x_nat)`` every step, which does not change ∇_x.
    """
    natural = natural_logits.detach()

    def objective(logits: Tensor) -> Tensor:
        terms = criterion.terms(logits, natural, labels, wmse_weight=wmse_weight, sce_weight=sce_weight)
        return sum(terms.values())

    return objective


def _start(
    x: Tensor, eps: float, random_start: RandomStart, start_std: float, generator: torch.Generator | None
) -> Tensor:
    if random_start is None:
        return x.clone()
    if random_start == "normal":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + start_std * noise
    if random_start == "uniform":
        noise = torch.empty_like(x).uniform_(-eps, eps, generator=generator)
        return (x + noise).clamp_(0.0, 1.0)
    raise ValueError(f"random_start must be 'normal', 'uniform' or None, got {random_start!r}")


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    objective: Objective,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: RandomStart = "normal",
    start_std: float = 0.001,
    generator: torch.Generator | None = None,
    autocast: bool = False,
    mode: str = "eval",
) -> Tensor:
    """L∞ PGD: ``steps`` sign-gradient ascent steps on ``objective(model(x_adv))``; returns x_adv.

    Args:
        model: returns logits for inputs in [0, 1]; put in eval mode for the attack, then restored.
            Under DDP pass the wrapped module (``ddp.module``): the attack needs no gradient sync.
        x: clean inputs in [0, 1], any shape with a batch dimension.
        objective: ``adv_logits -> scalar`` (see :func:`ce_objective` and friends).
        eps, step_size, steps: radius ε, step η, number of steps K. ``eps == 0`` or ``steps == 0``
            returns a clone of ``x``.
        random_start: ``"normal"`` (x + start_std·N(0,1), unclamped; official DKL/TRADES training),
            ``"uniform"`` (U(−ε, ε), clamped to [0, 1]; evaluation PGD) or ``None`` (start at x).
        generator: a ``torch.Generator`` on ``x.device`` for a reproducible random start.
        autocast: ``False`` (default; evaluation and the official float32 adversary): autocast is
            disabled inside. ``True``: the model's forward and backward run under the caller's autocast
            (IKL-AT ``attack.precision=amp``); the logits are cast to float32 before ``objective``, and
            ``x_adv``, the projection and the result stay float32. PGD uses only the sign of ∇_x, which
            bf16/fp16 can flip for near-zero components (fp16, unscaled, can also underflow them to 0, i.e.
            no step there), so the attack is close to, not equal to, the float32 one.
        mode: ``"eval"`` (default: DKL/TRADES training and every evaluation) or ``"batch_stats"``
            (train mode, BatchNorm on the batch's statistics without updating them: DM-AT's
            training adversary, :func:`batch_stats_mode`).

    After every step the iterate is projected onto the ε-ball around x and onto [0, 1].
    """
    x = x.detach().to(torch.promote_types(x.dtype, torch.float32))
    if eps == 0 or steps == 0:
        return x.clone()
    if mode not in ATTACK_MODES:
        raise ValueError(f"attack mode {mode!r} is not one of {', '.join(ATTACK_MODES)}")
    with ATTACK_MODES[mode](model), adversary_autocast(x.device.type, autocast), torch.enable_grad():
        x_adv = _start(x, eps, random_start, start_std, generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = float32_objective(objective, model(x_adv))
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + step_size * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)
    return x_adv.detach()
