"""Wide ResNets (Zagoruyko & Komodakis 2016) for 32 x 32 inputs: KD students/teachers and AT models.

One class serves two families whose files define the same network with the same module names:

* ``wrn_16_1``, ``wrn_16_2``, ``wrn_40_1``, ``wrn_40_2`` (KD; ``wrn_40_2`` is a CIFAR-100 teacher):
  ``megvii-research/mdistiller`` ``mdistiller/models/cifar/wrn.py`` (a08d46f).
* ``wrn_34_10``, ``wrn_28_10``, ``wrn_34_20`` (adversarial training, inputs in [0, 1]):
  ``csdongxian/AWP`` ``trades_AWP/models/wideresnet.py`` and ``AT_AWP/wideresnet.py`` (a7acf5d),
  ``yaodongyu/TRADES`` ``models/wideresnet.py``; the DKL AT code uses this WRN-34-10.

Keys: ``conv1``; ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2}`` plus ``convShortcut`` (1x1 conv)
in blocks whose width changes; ``bn1``; ``fc``. Depth ``6n + 4``, widths 16/16k/32k/64k.

Notes and differences:

* ``forward`` returns logits only (mdistiller also returns features).
* TRADES' ``models/wideresnet.py`` also builds an unused ``sub_block1`` whose weights are in its
  checkpoints; drop ``sub_block*`` keys before a strict load (the DKL AutoAttack script does).
* ``wrn_28_10`` here is the TRADES-style WRN. The paper's WRN-28-10 results with synthetic data use
  the DeepMind/DM-AT "WRN-28-10-swish" (other keys, SiLU, normalises inside): ``wrn_28_10_swish``
  (:mod:`ikl.models.dm_wide_resnet`), not this model.
* ``normalize=(mean, std)`` adds an :class:`~ikl.models.layers.InputNormalization` whose buffers
  are not saved, so checkpoint keys are unchanged. Default ``None``: no normalisation, as in AWP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ikl.models.layers import Normalize, build_input_norm, init_conv_fan_out_


class BasicBlock(nn.Module):
    """Pre-activation block; when the width changes, the shortcut sees the pre-activated input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.convShortcut: nn.Conv2d | None = None  # name kept: checkpoint key
        if in_planes != out_planes:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = F.relu(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage of ``n`` blocks, held in ``.layer`` (part of the checkpoint key names)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        blocks = [BasicBlock(in_planes, out_planes, stride, drop_rate)]
        blocks += [BasicBlock(out_planes, out_planes, 1, drop_rate) for _ in range(n - 1)]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``; global 8 x 8 average pool, so 32 x 32 inputs."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        normalize: Normalize | None = None,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.input_norm = build_input_norm(normalize)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_conv_fan_out_(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.input_norm(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.avg_pool2d(F.relu(self.bn1(out)), 8)
        return self.fc(torch.flatten(out, 1))
