"""The DeepMind WideResNet with SiLU ("WRN-28-10-swish") of the generated-data AT literature.

The network of Gowal et al. 2020/2021 (``deepmind-research`` ``adversarial_robustness/pytorch/
model_zoo.py``) as copied into ``wzekai99/DM-Improves-AT`` ``core/models/wideresnetwithswish.py``
(b390f25; Wang et al. 2023, the DM-AT code the paper's synthetic-data rows were trained with) and,
byte-identical, into ``jiequancui/DKL`` ``DKLv1/Adv-training-dkl/auto_attacks/models/
wideresnetwithswish.py`` (c5e8ad2), which evaluates the published ``cifar100_a5_b12_t4_50m.pt`` and
``cifar10_a3_b10_t4_20m.pt``. RobustBench's ``DMWideResNet``
(``robustbench/model_zoo/architectures/dm_wide_resnet.py``, 78fcc9e) is the same network with the
same keys; its ``Cui2023Decoupled_WRN-28-10`` and ``Wang2023Better_WRN-28-10/-70-16`` entries are
these models with ``activation_fn=nn.SiLU``.

Keys (``state_dict`` order): ``init_conv``; ``layer.{g}.block.{i}.{batchnorm_0, conv_0,
batchnorm_1, conv_1}`` plus ``shortcut`` (1x1 conv) in blocks whose width changes; ``batchnorm``;
``logits``. Depth ``6n + 4``, widths 16/16k/32k/64k, convs without bias.

What makes it differ from the TRADES WRN (:mod:`ikl.models.wide_resnet`), all reproduced here:

* SiLU activations (``activation="relu"`` gives the DeepMind ReLU variant);
* BatchNorm momentum 0.01 (DM-AT/DKL file; RobustBench's copy uses torch's 0.1, which only
  matters in training, and DM-AT's trainer sets momentum 1.0 for the very first step);
* TensorFlow "SAME" padding done by hand: ``conv_0`` has no padding and its input is padded by
  (1, 1, 1, 1) at stride 1 but (0, 1, 0, 1), right and bottom only, at stride 2;
* when the width changes, the block pre-activates its input once and both ``conv_0`` and the
  shortcut read the pre-activated tensor; otherwise the residual is the raw input;
* the input is standardised **inside** the model (``(x - mean) / std``), so it takes [0, 1] images
  (conventions rule 9) and the DKL evaluation runs it with ``--preprocess '01'``. The statistics are
  the reference's: CIFAR-10 (0.4914, 0.4822, 0.4465) / (0.2471, 0.2435, 0.2616) and CIFAR-100
  (0.5071, 0.4865, 0.4409) / (0.2673, 0.2564, 0.2762) (both differ in the 4th decimal from the
  statistics :mod:`ikl.data.cifar` records). They live in non-persistent buffers, so, as in the
  reference, they are not in ``state_dict`` and the published checkpoints load with ``strict=True``.

``normalize`` picks them: ``"cifar10"``, ``"cifar100"``, an explicit ``(mean, std)`` pair, or
``None`` (default) for the reference's choice by class count (``wideresnetwithswish(name,
dataset)``: CIFAR-100 statistics for 100 classes, CIFAR-10 for 10); any other class count needs an
explicit choice. Differences from the reference: ``forward`` never moves tensors between devices
(the buffers follow ``.to()``), activations are not in-place (same values; safe under autograd),
and the reference's ``padding`` option (input padding, 0 in every published model) is kept as
``input_padding``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import InputNormalization, init_conv_fan_out_

# The statistics the reference file normalises with (not ikl.data.cifar's): see the module docstring.
DM_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
DM_CIFAR10_STD = (0.2471, 0.2435, 0.2616)
DM_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
DM_CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DM_STATISTICS = {
    "cifar10": (DM_CIFAR10_MEAN, DM_CIFAR10_STD),
    "cifar100": (DM_CIFAR100_MEAN, DM_CIFAR100_STD),
}
ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU}
BN_MOMENTUM = 0.01

NormalizeChoice = str | tuple[Sequence[float] | float, Sequence[float] | float] | None


def resolve_statistics(normalize: NormalizeChoice, num_classes: int) -> tuple:
    """The (mean, std) the model standardises with; see the module docstring for the choices."""
    if normalize is None:
        by_classes = {10: "cifar10", 100: "cifar100"}
        if num_classes not in by_classes:
            raise ValueError(
                f"the DM WideResNet normalises inside the model with CIFAR-10 or CIFAR-100 statistics; with "
                f"{num_classes} classes pass normalize='cifar10', 'cifar100' or a (mean, std) pair"
            )
        normalize = by_classes[num_classes]
    if isinstance(normalize, str):
        if normalize not in DM_STATISTICS:
            raise ValueError(f"normalize={normalize!r} is not one of {', '.join(DM_STATISTICS)} or a (mean, std) pair")
        return DM_STATISTICS[normalize]
    if len(normalize) != 2:
        raise ValueError(f"normalize must be 'cifar10', 'cifar100', a (mean, std) pair or None, got {normalize!r}")
    return tuple(normalize)


class DMBlock(nn.Module):
    """Pre-activation residual block with hand-made "SAME" padding (see the module docstring)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}; the DM WideResNet uses 1 or 2")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=BN_MOMENTUM)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=BN_MOMENTUM)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if in_planes != out_planes:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        residual = x if self.shortcut is None else self.shortcut(act)
        out = self.conv_0(F.pad(act, self.pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return residual + out


class DMBlockGroup(nn.Module):
    """``num_blocks`` blocks in ``.block`` (part of the key names); only the first one strides."""

    def __init__(
        self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation: type[nn.Module]
    ) -> None:
        super().__init__()
        blocks = [DMBlock(in_planes, out_planes, stride, activation)]
        blocks += [DMBlock(out_planes, out_planes, 1, activation) for _ in range(num_blocks - 1)]
        self.block = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-``depth``-``width`` of DeepMind/DM-AT; inputs in [0, 1], standardised inside; 32 x 32."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        activation: str = "silu",
        normalize: NormalizeChoice = None,
        input_padding: int = 0,
        num_input_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"DM WideResNet depth must be 6n+4, got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        mean, std = resolve_statistics(normalize, num_classes)
        self.input_norm = InputNormalization(mean, std)
        self.input_padding = input_padding
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(num_input_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, widths[0], widths[1], 1, act),
            DMBlockGroup(n, widths[1], widths[2], 2, act),
            DMBlockGroup(n, widths[2], widths[3], 2, act),
        )
        self.batchnorm = nn.BatchNorm2d(widths[3], momentum=BN_MOMENTUM)
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)
        init_conv_fan_out_(self)  # normal(0, sqrt(2 / (k*k*out))) as the reference; BN 1/0
        nn.init.zeros_(self.logits.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_padding > 0:
            x = F.pad(x, (self.input_padding,) * 4)
        out = self.layer(self.init_conv(self.input_norm(x)))
        out = F.avg_pool2d(self.relu(self.batchnorm(out)), 8)
        return self.logits(torch.flatten(out, 1))
