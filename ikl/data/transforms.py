"""Image transforms for the CIFAR-style recipes: basic crop/flip, Cutout, the two-view scheme."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision import transforms as T

from .common import DataError


class Cutout:
    """Zero one or more square holes of side ``length`` in a ``C x H x W`` tensor.

    Same distribution as the Cutout (DeVries & Taylor 2017) used by the official IKL-AT code
    (``autoaug.py``): each hole's centre is uniform over the pixels, the square is clipped at
    the border (so holes near the edge are smaller), holes may overlap. Draws from torch's RNG.
    """

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes = n_holes
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        mask = torch.ones(h, w, dtype=img.dtype)
        half = self.length // 2
        for _ in range(self.n_holes):
            y = int(torch.randint(h, ()))
            x = int(torch.randint(w, ()))
            mask[max(y - half, 0) : min(y + half, h), max(x - half, 0) : min(x + half, w)] = 0
        return img * mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_holes={self.n_holes}, length={self.length})"


class TwoView:
    """Apply two transforms to the same image and stack the results: ``[2, C, H, W]``.

    The official IKL-AT ``CIFAR100V2`` returns ``[basic(img), augmented(img)]`` (independent
    random crops); this stacks them so the default collate gives ``[B, 2, C, H, W]``.
    """

    def __init__(self, first: Callable[[Any], torch.Tensor], second: Callable[[Any], torch.Tensor]):
        self.first = first
        self.second = second

    def __call__(self, img: Any) -> torch.Tensor:
        return torch.stack([self.first(img), self.second(img)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(\n  {self.first!r},\n  {self.second!r})"


def to_tensor(mean: Sequence[float], std: Sequence[float], normalize: bool) -> list[Callable[[Any], Any]]:
    """``ToTensor`` (+ ``Normalize(mean, std)`` when ``normalize``)."""
    steps: list[Callable[[Any], Any]] = [T.ToTensor()]
    if normalize:
        steps.append(T.Normalize(mean, std))
    return steps


def crop_flip(size: int, padding: int, flip: bool) -> list[Callable[[Any], Any]]:
    """``RandomCrop(size, padding)`` with zero fill (+ ``RandomHorizontalFlip``)."""
    steps: list[Callable[[Any], Any]] = [T.RandomCrop(size, padding=padding)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return steps


def cifar_train_transform(
    augment: str, mean: Sequence[float], std: Sequence[float], normalize: bool
) -> Callable[[Any], torch.Tensor]:
    """The CIFAR train transform for ``augment`` in {"none", "basic", "autoaug", "cutout"}.

    "autoaug" and "cutout" are the official IKL-AT two-view scheme: basic view plus a view with
    crop/flip followed by AutoAugment (CIFAR-10 policy, also for CIFAR-100, as the official code)
    or by Cutout(1 hole, 16 px). Cutout zeroes pixels before normalisation (the official code
    never normalises, so its holes are black; ours are black too).
    """
    basic = crop_flip(32, 4, True)
    tail = to_tensor(mean, std, normalize)
    if augment == "none":
        return T.Compose(tail)
    if augment == "basic":
        return T.Compose(basic + tail)
    if augment == "autoaug":
        policy = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10)
        return TwoView(T.Compose(basic + tail), T.Compose([*basic, policy, *tail]))
    if augment == "cutout":
        second = T.Compose([*basic, T.ToTensor(), Cutout(1, 16), *tail[1:]])
        return TwoView(T.Compose(basic + tail), second)
    raise DataError(f"unknown CIFAR augment {augment!r}; use none, basic, autoaug or cutout")
