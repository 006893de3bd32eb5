"""Class-wise global information (GI, paper Eq. 9): the C×C class-wise mean-softmax prior."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class ClassPrior(nn.Module):
    """Row c holds the mean over class-c samples of softmax(z/τ), rebuilt once per epoch.

    As the official code (PAPER.md §0.6, §1.4, §1.5): uniform 1/C before the first ``step``;
    ``update`` accumulates during an epoch; ``step`` at its end row-normalises the sums and swaps
    them in (``momentum`` = official AT ``--m``, 1.0 = replace wholesale). Unlike the official code
    a class unseen in an epoch keeps its previous row instead of becoming NaN, statistics are
    all-reduced under ``torch.distributed`` (instead of DataParallel-replicated), and prior plus
    accumulator live in ``state_dict`` so a resume continues exactly.
    """

    def __init__(self, num_classes: int, *, temperature: float = 1.0, momentum: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if temperature <= 0:
            raise ValueError(f"prior temperature must be > 0, got {temperature}")
        if not 0 < momentum <= 1:
            raise ValueError(f"prior momentum must be in (0, 1], got {momentum}")
        self.num_classes = num_classes
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("prior", torch.full((num_classes, num_classes), 1.0 / num_classes))
        self.register_buffer("sums", torch.zeros(num_classes, num_classes, dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.float64))

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add softmax(logits/τ) of each sample to its class's running sum."""
        probs = F.softmax(logits.detach().to(torch.float64) / self.temperature, dim=1)
        labels = labels.to(self.sums.device)
        self.sums.index_add_(0, labels, probs.to(self.sums.device))
        # index_add_, not bincount: bincount's output size depends on the labels' values, which makes
        # the host wait for the device every step and cannot be captured in a CUDA graph
        self.counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    @torch.no_grad()
    def step(self) -> None:
        """End of epoch: all-reduce, row-normalise, swap in, reset the accumulator."""
        sums, counts = self.sums.clone(), self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        seen = counts > 0
        new_rows = (sums[seen] / sums[seen].sum(dim=1, keepdim=True)).to(self.prior.dtype)
        self.prior[seen] = self.momentum * new_rows + (1 - self.momentum) * self.prior[seen]
        self.sums.zero_()
        self.counts.zero_()

    def weights(self, labels: Tensor) -> Tensor:
        """[B, C]: the prior row of each label."""
        return self.prior[labels]
