"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings") for adversarial training on CIFAR.

Source architecture: ``csdongxian/AWP`` ``AT_AWP/preactresnet.py`` (a7acf5d), ``PreActResNet18``,
the model of Rice et al.'s robust-overfitting code. Inputs in [0, 1]; no normalisation unless
``normalize=(mean, std)`` is given (non-persistent buffers, so the keys below are unchanged).

Keys: ``conv1`` (3x3, 3 -> 64, stride 1); ``layer{1..4}.{0,1}.{bn1,conv1,bn2,conv2}`` plus
``layer*.0.shortcut.0`` (a bare 1x1 conv, no BN) where the shape changes; the final BatchNorm is
``bn`` (not ``bn1``); ``linear``. Head: ReLU(bn), 4 x 4 average pool, linear.

Difference from the source: the optional input normalisation. Initialisation is PyTorch's
default, as in the source.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import Normalize, build_input_norm


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a projection shortcut, if any, is fed the pre-activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct ResNet-18: 4 stages of 2 blocks, widths 64/128/256/512, for 32 x 32 inputs."""

    def __init__(self, num_classes: int = 10, normalize: Normalize | None = None) -> None:
        super().__init__()
        self.input_norm = build_input_norm(normalize)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stage = [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_planes = planes
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.input_norm(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        return self.linear(torch.flatten(out, 1))
