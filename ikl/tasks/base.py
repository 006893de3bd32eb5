"""The task contract the engine trains through (conventions rule 6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ikl.engine.distributed import unwrap


class Task(nn.Module):
    """A method: ``forward(x, y, epoch=)`` → dict with ``loss``, ``logits`` and every ``loss_*`` term.

    ``self.model`` is the network being trained (the engine may wrap it in DDP); subclasses keep
    any other state (class priors, EMA copies) as submodules and list it in ``checkpoint_state``.
    """

    model: nn.Module
    # True if one training step (forward, backward, optimizer step, the hooks before it) can be
    # captured as a CUDA graph (``trainer.cuda_graphs``): no host reads of device values, no Python
    # branching on data, and nothing that changes within an epoch except tensors updated in place.
    graph_safe: bool = False

    def on_epoch_start(self, epoch: int) -> None:
        """Called before epoch ``epoch`` (1-based) starts."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after the last step of epoch ``epoch``, before evaluation."""

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called after backward, before the optimizer step."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after each optimizer step (EMA updates, AWP restore)."""

    def optimizer_param_groups(self) -> Any:
        """What the optimizer is built over: the model's parameters, or parameter groups (a task may
        give some parameters their own weight decay)."""
        return self.model.parameters()

    def evaluate(self, loader: DataLoader, device: torch.device, epoch: int) -> dict[str, float]:
        """Task-specific metrics beyond clean top-1/top-5 (e.g. PGD accuracy)."""
        return {}

    def weight_files(self) -> dict[str, nn.Module]:
        """Extra weights-only files to write each epoch, name → module (e.g. EMA models)."""
        return {}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
