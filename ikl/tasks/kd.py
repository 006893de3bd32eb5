"""Teacher–student knowledge distillation (IKL-KD and its baselines), PAPER.md §1.5."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.tasks.base import Task


def freeze(teacher: nn.Module) -> nn.Module:
    """A frozen teacher: eval mode, no gradients (conventions rule 9)."""
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def warmup_factor(epoch: int, warmup_epochs: float) -> float:
    """min(epoch / warmup, 1) with 1-based epochs, applied per epoch as mdistiller does."""
    return 1.0 if warmup_epochs <= 0 else min(epoch / warmup_epochs, 1.0)


class DistillationTask(Task):
    """L = ce_weight·CE(z_s, y) + min(epoch/warmup, 1)·Σ criterion terms(z_s, z_t, y).

    ``criterion`` is any loss module of ``ikl.losses`` (``KDLoss``, ``DKDLoss``, ``KLLoss``,
    ``DKLLoss``, ``IKLLoss``) or None for plain supervised training (``loss=ce``, e.g. to train a
    teacher). A criterion with ``observe``/``end_epoch`` (IKL's class prior) is fed the teacher's
    logits every step and rebuilt at the end of each epoch, as the official trainer does.

    Strong recipes (timm's ResNet-strikes-back family, VanillaKD): ``mixup`` is a batch mixer
    ``(x, y) -> (x_mixed, soft targets)`` such as ``timm.data.Mixup`` (Mixup/CutMix), applied to
    training batches before the student and the teacher see them; ``supervised_loss``
    ``(logits, targets)`` replaces the cross-entropy on the labels (e.g.
    ``timm.loss.BinaryCrossEntropy``; cross-entropy takes the soft targets too). The criterion and
    the class prior get the dominant label of a mixed pair (``argmax`` of the soft target), as
    VanillaKD's DKD does.

    Graph-safe: the warm-up factor changes only between epochs, the prior is updated in place.
    With ``mixup`` it is not (the mixing draws its coefficients on the host).
    """

    graph_safe = True

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        criterion: nn.Module | None = None,
        *,
        ce_weight: float = 1.0,
        warmup_epochs: float = 0.0,
        mixup: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        supervised_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if (teacher is None) != (criterion is None):
            raise ValueError("a distillation criterion needs a teacher and a teacher needs a criterion")
        self.model = student
        self.teacher = freeze(teacher) if teacher is not None else None
        self.criterion = criterion
        self.ce_weight = ce_weight
        self.warmup_epochs = warmup_epochs
        self.mixup = mixup
        self.supervised_loss = supervised_loss
        if mixup is not None:
            self.graph_safe = False

    def train(self, mode: bool = True) -> DistillationTask:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # pinned: BN statistics and dropout of the teacher never change
        return self

    def teacher_logits(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            logits = self.teacher(x)
        return logits.clone()  # a normal tensor again, usable as a constant in autograd

    def forward(self, x: Tensor, y: Tensor, *, epoch: int) -> dict[str, Any]:
        target = y
        if self.training and self.mixup is not None:
            x, target = self.mixup(x, y)
        labels = target.argmax(1) if target.ndim == 2 else target  # the dominant label of a mixed pair
        logits = self.model(x)
        supervised = self.supervised_loss or F.cross_entropy
        out: dict[str, Any] = {"logits": logits, "loss_ce": self.ce_weight * supervised(logits.float(), target)}
        loss = out["loss_ce"]
        if self.criterion is not None:
            teacher_logits = self.teacher_logits(x)
            terms = self.criterion(logits, teacher_logits, labels)
            factor = warmup_factor(epoch, self.warmup_epochs)
            out.update(terms)
            loss = loss + factor * sum(terms.values())
            if self.training and hasattr(self.criterion, "observe"):
                self.criterion.observe(teacher_logits, labels)
        out["loss"] = loss
        return out

    def on_epoch_end(self, epoch: int) -> None:
        if hasattr(self.criterion, "end_epoch"):
            self.criterion.end_epoch()

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        if self.criterion is not None:
            state["criterion"] = self.criterion.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        super().load_checkpoint_state(state)
        if self.criterion is not None:
            self.criterion.load_state_dict(state["criterion"])
