"""ShuffleNet V1 (Zhang et al. 2018) and V2 (Ma et al. 2018) for 32 x 32 inputs (CRD / mdistiller).

Source architectures: ``megvii-research/mdistiller`` ``mdistiller/models/cifar/ShuffleNetv1.py``
and ``ShuffleNetv2.py`` (a08d46f, from ``kuangliu/pytorch-cifar`` via ``HobbitLong/RepDistiller``).

``ShuffleV1``: stem ``conv1`` (1x1, 3 -> 24) + ``bn1``; ``layer{1,2,3}`` of 4/8/4 bottlenecks
with outputs 240/480/960 and 3 groups. Bottleneck keys ``conv1`` (grouped 1x1; one group when the
input has 24 channels), ``bn1``, ``conv2`` (depthwise 3x3), ``bn2``, ``conv3`` (grouped 1x1),
``bn3``. The first bottleneck of a layer has stride 2 and concatenates a 3x3 average-pooled
shortcut, so it produces ``out - in`` channels itself. Head: 4 x 4 average pool, ``linear``.

``ShuffleV2`` (net size 1): stem ``conv1`` (1x1, 3 -> 24) + ``bn1``; ``layer{1,2,3}`` each =
``DownBlock`` (``conv1..5``, ``bn1..5``, stride 2) + 3/7/3 ``BasicBlock`` (split half; ``conv1..3``,
``bn1..3``), outputs 116/232/464; ``conv2`` (1x1, 464 -> 1024) + ``bn2``; 4 x 4 average pool;
``linear``.

Difference from the sources: ``forward`` returns logits only. Initialisation is PyTorch's
default, as in the sources.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, g*c, H, W] -> [N, c*g, H, W]: interleave the channels of the ``groups`` groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv(inp: int, oup: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False)


class V1Bottleneck(nn.Module):
    """ShuffleNet V1 unit: gconv 1x1, shuffle, dwconv 3x3, gconv 1x1; add, or concat if strided."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups
        self.stride = stride
        self.conv1 = _conv(in_planes, mid, groups=self.first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = _conv(mid, mid, 3, stride, groups=mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(mid, out_planes, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    """ShuffleNet V1 for CIFAR with layer widths ``out_planes`` and ``num_blocks`` units each."""

    def __init__(
        self,
        out_planes: Sequence[int] = (240, 480, 960),
        num_blocks: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(3, 24)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for i, (out, n) in enumerate(zip(out_planes, num_blocks, strict=True)):
            units = [V1Bottleneck(in_planes, out - in_planes, 2, groups)]
            units += [V1Bottleneck(out, out, 1, groups) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            in_planes = out
        self.linear = nn.Linear(out_planes[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.flatten(F.avg_pool2d(out, 4), 1))


class V2BasicBlock(nn.Module):
    """ShuffleNet V2 unit: split, (1x1, dw 3x3, 1x1) on the second half, concat, shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = int(channels * split_ratio)
        c = self.split
        self.conv1 = _conv(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = _conv(c, c, 3, groups=c)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = _conv(c, c)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class V2DownBlock(nn.Module):
    """ShuffleNet V2 stride-2 unit: two branches on the full input, concat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = _conv(in_channels, in_channels, 3, 2, groups=in_channels)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = _conv(in_channels, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = _conv(in_channels, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _conv(mid, mid, 3, 2, groups=mid)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = _conv(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet V2 for CIFAR; defaults are net size 1 (116/232/464, 1024)."""

    def __init__(
        self,
        out_channels: Sequence[int] = (116, 232, 464, 1024),
        num_blocks: Sequence[int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(3, 24)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for i, (out, n) in enumerate(zip(out_channels[:3], num_blocks, strict=True)):
            units = [V2DownBlock(in_channels, out)] + [V2BasicBlock(out) for _ in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            in_channels = out
        self.conv2 = _conv(in_channels, out_channels[3])
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(torch.flatten(F.avg_pool2d(out, 4), 1))
