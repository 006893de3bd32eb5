"""ImageNet models: the ImageNet KD pairs (ResNet34 -> ResNet18, ResNet50 -> MobileNetV1) and the
ImageNet-LT teacher (ResNeXt-101 32x4d).

* ``imagenet_resnet18``, ``imagenet_resnet34``, ``imagenet_resnet50``: ``torchvision.models``
  ResNets built with ``weights=None`` (never downloaded here), so their keys are torchvision's
  and the ``IMAGENET1K_V1`` state dicts (``resnet34-333f7ec4``, ``resnet50-19c8e357``, the teacher
  weights mdistiller loads in ``mdistiller/models/imagenet/resnet.py``) load with ``strict=True``.
  mdistiller's own ResNet moves each block's final ReLU to the next block's input, which computes
  the same logits; torchvision's model is used as is.
* ``imagenet_mobilenet_v1``: the MobileNetV1 (Howard et al. 2017) student of
  ``megvii-research/mdistiller`` ``mdistiller/models/imagenet/mobilenetv1.py`` (a08d46f). Keys
  ``model.0.{0,1}`` (3x3 stride-2 conv 3 -> 32, BN), ``model.{1..13}.{0,1,3,4}`` (depthwise 3x3,
  BN, pointwise 1x1, BN) and ``fc`` (1024 -> classes); ``model.14`` is a 7 x 7 average pool, so
  inputs are 224 x 224. The source fixes 1000 classes; here ``num_classes`` is a parameter.
* ``imagenet_resnext101_32x4d``: the ImageNet-LT teacher of the official IKL code
  (``jiequancui/DKL`` ``DKLv1/Imbalanced_KD-dkl/models/resnet_imagenet.py`` ``resnext101_32x4d``:
  torchvision's ``ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)``, which
  torchvision itself does not register). Built from ``torchvision.models.resnet.ResNet``, so its
  keys are torchvision's ResNeXt naming (``layer3.22.conv2.weight`` is a grouped 3x3 conv of
  width 512 = 32 groups x 4 x 4). The official script wraps every network in ``DDAModel``
  (``encoder.`` prefix) under DDP (``module.``), so its checkpoints hold
  ``state_dict["module.encoder.<torchvision key>"]``; it loads them after dropping ``module.``.

All ``forward`` methods return logits only (mdistiller's also return features).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

# (output channels, stride) of the 13 depthwise-separable layers after the stem
_MOBILENET_V1_LAYERS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
)


def _conv_bn_relu(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True))


def _depthwise_separable(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0) for 224 x 224 inputs, mdistiller layout."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers = [_conv_bn_relu(3, 32, 2)]
        channels = 32
        for out, stride in _MOBILENET_V1_LAYERS:
            layers.append(_depthwise_separable(channels, out, stride))
            channels = out
        layers.append(nn.AvgPool2d(7))
        self.model = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.model(x), 1))


def imagenet_resnext101_32x4d(num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """ResNeXt-101 32x4d (Xie et al. 2017) with torchvision's layout and initialisation."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, groups=32, width_per_group=4, **kwargs)


def imagenet_resnet(depth: int, num_classes: int = 1000, **kwargs: object) -> nn.Module:
    """torchvision ``resnet{18,34,50}`` with random weights; ``kwargs`` go to torchvision."""
    if depth not in (18, 34, 50):
        raise ValueError(f"imagenet_resnet depth must be 18, 34 or 50, got {depth}")
    builder = getattr(torchvision.models, f"resnet{depth}")
    return builder(weights=None, num_classes=num_classes, **kwargs)
