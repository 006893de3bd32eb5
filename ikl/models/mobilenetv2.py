"""MobileNetV2 (Sandler et al. 2018) at width 0.5, the CIFAR student "MobileNetV2" of CRD / mdistiller.

Source architecture: ``megvii-research/mdistiller`` ``mdistiller/models/cifar/mobilenetv2.py``
(a08d46f), builder ``mobile_half`` = expansion T = 6, width multiplier 0.5, for 32 x 32 inputs.

Keys: ``conv1.{0,1}`` (3x3 stride-2 conv 3 -> 16, BN); ``blocks.{s}.{i}.conv.{0,1,3,4,6,7}`` for 7
stages of inverted residuals (pointwise expand, BN, ReLU, depthwise 3x3, BN, ReLU, pointwise
project, BN), output widths 8/12/16/32/48/80/160 and strides 1/1/2/2/1/2/1; ``conv2.{0,1}``
(1x1 160 -> 1280, BN); ``classifier.0`` (1280 -> classes). The pool is ``AvgPool2d(2,
ceil_mode=True)`` for 32 x 32 inputs. The source's ReLU is plain ReLU, not ReLU6.

Differences from the source: ``forward`` returns logits only, and nothing is printed.
"""

from __future__ import annotations

import torch
from torch import nn

from ikl.models.layers import init_conv_fan_out_

# (channels c, repeats n, first stride s) before the width multiplier; the first stage has
# expansion 1, the others the model's expansion T
_STAGES = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); identity skip when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _make_stage(inp: int, oup: int, n: int, stride: int, expand_ratio: int) -> nn.Sequential:
    blocks = [InvertedResidual(inp, oup, stride, expand_ratio)]
    blocks += [InvertedResidual(oup, oup, 1, expand_ratio) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2 with expansion ``expansion`` (stages 2-7) and ``width_mult``."""

    def __init__(
        self,
        num_classes: int = 100,
        expansion: int = 6,
        width_mult: float = 0.5,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"MobileNetV2 input_size must be a multiple of 32, got {input_size}")
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for k, (c, n, s) in enumerate(_STAGES):
            self.blocks.append(_make_stage(channels, int(c * width_mult), n, s, expansion if k else 1))
            channels = int(c * width_mult)
        last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self._init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.avgpool(self.conv2(x))
        return self.classifier(torch.flatten(x, 1))

    def _init_weights(self) -> None:
        init_conv_fan_out_(self)
        nn.init.normal_(self.classifier[0].weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)


def mobilenetv2_half(num_classes: int = 100) -> MobileNetV2:
    """mdistiller ``mobile_half``: MobileNetV2 with T = 6 and width 0.5 for 32 x 32 inputs."""
    return MobileNetV2(num_classes=num_classes, expansion=6, width_mult=0.5)
