"""CIFAR ResNets of the CRD / mdistiller zoo: resnet8 ... resnet110, resnet8x4, resnet32x4.

Source architecture: ``megvii-research/mdistiller`` ``mdistiller/models/cifar/resnet.py``
(a08d46f, itself from ``HobbitLong/RepDistiller``), the 3-stage ResNet of He et al. 2016 for
32 x 32 inputs. Module names, and so ``state_dict`` keys, follow that file so the published
CIFAR-100 teachers (``resnet56``, ``resnet110``, ``resnet32x4``) load with ``strict=True``:
``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``layer*.0.downsample.{0,1}``
(1x1 conv + BN, only where the shape changes) and ``fc``.

Differences from the source: ``forward`` returns the logits only (mdistiller also returns a
feature dict), and the unused Bottleneck variant is not provided.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import init_conv_fan_out_


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32 x 32 inputs with stage widths ``widths[1:]`` and stem ``widths[0]``."""

    def __init__(self, depth: int, widths: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = _make_stage(widths[0], widths[1], n, stride=1)
        self.layer2 = _make_stage(widths[1], widths[2], n, stride=2)
        self.layer3 = _make_stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_fan_out_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


THIN_WIDTHS = (16, 16, 32, 64)
WIDE_WIDTHS = (32, 64, 128, 256)  # the "x4" models


def cifar_resnet(depth: int, num_classes: int = 100, wide: bool = False) -> CifarResNet:
    """``resnet{depth}`` (widths 16/32/64) or, with ``wide``, ``resnet{depth}x4`` (64/128/256)."""
    return CifarResNet(depth, WIDE_WIDTHS if wide else THIN_WIDTHS, num_classes=num_classes)
