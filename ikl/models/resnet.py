"""4-stage ResNets for 32 x 32 inputs: mdistiller ``ResNet18``/``ResNet50`` and the AT ``resnet18``.

Source architectures (all share one layout, the ``kuangliu/pytorch-cifar`` ResNet):

* ``ResNet50`` and ``ResNet18``: ``megvii-research/mdistiller`` ``mdistiller/models/cifar/resnetv2.py``
  (a08d46f). ``ResNet50`` is a CIFAR-100 teacher and must load strictly.
* ``resnet18``: the adversarial-training ResNet-18 of ``csdongxian/AWP``
  ``trades_AWP/models/resnet.py`` (a7acf5d), identical to ``yaodongyu/TRADES``
  ``models/resnet.py``. Inputs in [0, 1]; optional in-model normalisation (see below).

Keys: ``conv1`` (3x3, stride 1), ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]}``,
``layer*.{i}.shortcut.{0,1}`` (1x1 conv + BN where the shape changes) and ``linear``.

Differences from the sources: ``forward`` returns the logits only; the pooling is adaptive (the AWP
file uses ``avg_pool2d(x, 4)``: the same on 32 x 32 inputs up to float rounding, ~1e-7); ``normalize=(mean, std)``
adds an :class:`~ikl.models.layers.InputNormalization` whose buffers are not in ``state_dict``.
The mdistiller builders use He fan-out initialisation, the AWP one PyTorch's default, as in the
sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import Normalize, build_input_norm, init_conv_fan_out_


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; post-activation residual."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 (x4 channels) with BN; post-activation residual."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem 3x3 conv (64) + 4 stages (64/128/256/512 x expansion) + global pool + ``linear``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int = 10,
        normalize: Normalize | None = None,
        kaiming_init: bool = True,
    ) -> None:
        super().__init__()
        self.input_norm = build_input_norm(normalize)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            stage, in_planes = _make_stage(block, in_planes, planes, n, 1 if i == 0 else 2)
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        if kaiming_init:
            init_conv_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.input_norm(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))


def _make_stage(
    block: type[BasicBlock] | type[Bottleneck], in_planes: int, planes: int, n: int, stride: int
) -> tuple[nn.Sequential, int]:
    layers = []
    for s in [stride] + [1] * (n - 1):
        layers.append(block(in_planes, planes, s))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes


def resnet18_cifar(num_classes: int = 100) -> ResNet:
    """mdistiller ``ResNet18`` (``resnetv2.py``): BasicBlock x [2, 2, 2, 2], He init."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes)


def resnet50_cifar(num_classes: int = 100) -> ResNet:
    """mdistiller ``ResNet50`` (``resnetv2.py``): Bottleneck x [3, 4, 6, 3], He init."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes)


def resnet18_at(num_classes: int = 10, normalize: Normalize | None = None) -> ResNet:
    """TRADES/AWP ``ResNet18`` for adversarial training: PyTorch default init, inputs in [0, 1]."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, normalize=normalize, kaiming_init=False)
