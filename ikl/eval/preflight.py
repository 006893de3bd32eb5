"""Pre-flight checks before any attack: the model contract AutoAttack's numbers depend on.

AutoAttack (``fra31/auto-attack`` README and ``autoattack/checks.py``) assumes a deterministic
classifier that takes inputs in [0, 1] and returns logits. A model left in train mode (dropout,
batch statistics), a loader that normalises, or a batch-dependent forward silently gives a
different, usually *higher*, robust accuracy. Each check below fails with one ``ConfigError`` line
saying what to do. :func:`prepare_for_evaluation` puts the model in eval mode and freezes it
(our choice: we fix these two ourselves rather than refuse; :func:`preflight` then verifies that
they held, so a forward that switches itself back to train mode is still refused).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ikl.errors import ConfigError

CPU_TOLERANCE = 1e-5
# TF32 convolutions/matmuls (PyTorch's CUDA default for cuDNN) round to 10 mantissa bits and pick
# kernels by batch size, so batch-1 and full-batch logits differ by ~1e-4 relative on a GPU.
CUDA_TOLERANCE = 1e-3
PER_SAMPLE_CHECKS = 4


class NormalizedModel(nn.Module):
    """``x ↦ model((x − mean) / std)``: a model trained on normalised inputs, seen as one on [0, 1].

    ``mean``/``std`` are non-persistent buffers, so the wrapper adds nothing to a state_dict and
    follows the model across devices.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if any(s <= 0 for s in std):
            raise ConfigError(f"input normalisation std must be positive, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def prepare_for_evaluation(model: nn.Module) -> nn.Module:
    """Eval mode for every module and ``requires_grad=False`` for every parameter; returns ``model``."""
    model.eval()
    model.requires_grad_(False)
    return model


def check_unit_range(x: Tensor) -> None:
    """Refuse inputs outside [0, 1] (a loader that normalises) or non-finite inputs."""
    if not torch.isfinite(x).all():
        raise ConfigError("the test inputs contain NaN or inf; check the dataset")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ConfigError(
            f"test inputs lie in [{low:.3f}, {high:.3f}], not [0, 1]: the loader normalises them; set "
            "dataset.builder.normalize=false and let the model normalise (NormalizedModel / the checkpoint's "
            "input_normalization)"
        )


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model with any module in training mode."""
    training = [name or type(model).__name__ for name, module in model.named_modules() if module.training]
    if training:
        raise ConfigError(
            f"{len(training)} module(s) are in training mode (first: {training[0]}): dropout and batch statistics "
            "would change the model under attack; call model.eval() and make sure forward() does not call train()"
        )


def check_frozen(model: nn.Module) -> None:
    """Refuse a model with parameters that require grad (attacks need gradients w.r.t. inputs only)."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if trainable:
        raise ConfigError(
            f"{len(trainable)} parameter(s) require grad (first: {trainable[0]}); freeze the model with "
            "model.requires_grad_(False) before evaluating"
        )


def _tolerance(logits: Tensor) -> float:
    base = CUDA_TOLERANCE if logits.device.type == "cuda" else CPU_TOLERANCE
    return base * max(1.0, float(logits.abs().max()))


@torch.no_grad()
def check_forward(model: nn.Module, x: Tensor, num_classes: int) -> dict[str, float]:
    """Logits of shape [B, num_classes], finite, equal for two passes and for batch size 1 vs B."""
    first = model(x)
    if not isinstance(first, Tensor) or tuple(first.shape) != (len(x), num_classes):
        shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
        raise ConfigError(
            f"the model returned {shape} for a batch of {len(x)}, expected logits of shape [{len(x)}, {num_classes}]; "
            "check model= and the dataset's num_classes"
        )
    if not torch.isfinite(first).all():
        raise ConfigError("the model returned NaN or inf logits on clean inputs; check the checkpoint")
    tolerance = _tolerance(first)
    repeat_diff = float((model(x) - first).abs().max())
    if not repeat_diff <= tolerance:  # NaN counts as a difference
        raise ConfigError(
            f"two forward passes on the same batch differ by {repeat_diff:.2e} (> {tolerance:.1e}): the model is "
            "randomised (dropout in forward, a stochastic layer); AutoAttack's standard version needs a deterministic model"
        )
    single = torch.cat([model(x[i : i + 1]) for i in range(min(PER_SAMPLE_CHECKS, len(x)))])
    batch_diff = float((single - first[: len(single)]).abs().max())
    if not batch_diff <= tolerance:
        raise ConfigError(
            f"logits for batch size 1 differ from the full batch by {batch_diff:.2e} (> {tolerance:.1e}): the model "
            "mixes samples (batch norm in training mode?); evaluate a model whose outputs do not depend on the batch"
        )
    return {"repeat_max_diff": repeat_diff, "batch_max_diff": batch_diff, "tolerance": tolerance}


def preflight(model: nn.Module, x: Tensor, num_classes: int) -> dict[str, float]:
    """All checks on one batch ``x`` (on the model's device). Returns the measured differences.

    Run after :func:`prepare_for_evaluation`; raises ``ConfigError`` at the first failure.
    """
    check_unit_range(x)
    check_eval_mode(model)
    check_frozen(model)
    report = check_forward(model, x, num_classes)
    check_eval_mode(model)
    return report
