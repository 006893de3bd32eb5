"""VGG with BatchNorm for CIFAR (vgg8/11/13/16/19), as in the CRD / mdistiller zoo.

Source architecture: ``megvii-research/mdistiller`` ``mdistiller/models/cifar/vgg.py`` (a08d46f,
from ``HobbitLong/RepDistiller``); the registry names map to its ``vgg*_bn`` builders and
configurations "S" (vgg8), "A", "B" (vgg13, a CIFAR-100 teacher), "D" and "E".

Keys: ``block{0..4}.{j}`` where each block is ``[Conv2d(bias=True), BatchNorm2d, ReLU] x k`` with
the final ReLU left out (so indices 0, 1, 3, 4, ...), and ``classifier`` (512 -> classes). Pools
hold no weights: a 2x2 max pool follows blocks 0-2, and block 3 only for 64 x 64 inputs (as in
the source, whose ``pool3`` is skipped on 32 x 32 CIFAR); a global average pool follows block 4.

Difference from the source: ``forward`` returns logits only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import init_conv_fan_out_

VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(in_channels, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        in_channels = w
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    """Five conv blocks separated by max pools, global average pool, one linear layer."""

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        in_channels = 3
        for i, widths in enumerate(config):
            self.add_module(f"block{i}", _make_block(widths, in_channels))
            in_channels = widths[-1]
        self.pool = nn.MaxPool2d(2, stride=2)
        self.classifier = nn.Linear(512, num_classes)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        use_pool3 = x.shape[2] == 64
        x = self.pool(F.relu(self.block0(x)))
        x = self.pool(F.relu(self.block1(x)))
        x = self.pool(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if use_pool3:
            x = self.pool(x)
        x = F.relu(self.block4(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def _init_weights(self) -> None:
        init_conv_fan_out_(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)


def vgg(name: str, num_classes: int = 100) -> VGG:
    """Build ``vgg8``, ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19`` (all with BatchNorm)."""
    return VGG(VGG_CONFIGS[name], num_classes=num_classes)
