"""Shared data types: the :class:`Datasets` bundle, :class:`DataError`, uint8 image datasets
and deterministic subsetting."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ikl.errors import UserError

SUBSET_SEED = 0


class DataError(UserError):
    """A dataset is missing or unreadable. The message is one line: what, where, how to fix."""


@dataclass(frozen=True)
class CropFlip:
    """The random crop (zero padding ``padding`` px) + optional horizontal flip a train split uses.

    Recorded on :class:`Datasets` so :class:`ikl.data.DeviceCIFARLoader` can reproduce the
    same augmentation on the device.
    """

    padding: int
    flip: bool


@dataclass
class Datasets:
    """A train/test pair plus what a model and the loaders need to know about it.

    ``train``/``test`` yield ``(image, label)``: ``image`` a float ``C x H x W`` tensor in
    [0, 1] (or normalised when ``normalized``; a ``2 x C x H x W`` stack of two views when
    ``two_view``), ``label`` an int. ``mean``/``std`` are always the dataset statistics, whether
    or not the transforms apply them. ``crop_flip`` describes the train augmentation when it is
    a plain random crop/flip (``None``: no augmentation, or one the device loader cannot do).
    ``train_batch_sampler`` (``None`` for plain shuffling) builds the train batch sampler that
    :func:`ikl.data.build_loaders` uses instead: ``factory(batch_size=<global>, seed=, rank=,
    world_size=)`` returning a batch sampler with ``set_epoch``, ``seed`` and ``rank`` (e.g. the
    real + generated mixing of :class:`ikl.data.MixedBatchSampler`).
    ``class_groups`` names groups of classes (e.g. many/medium/few-shot of a long-tailed train
    set, :func:`ikl.data.long_tail.shot_groups`); the per-epoch evaluation then also reports the
    accuracy of each group (``test/acc_<group>``).
    """

    train: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool
    crop_flip: CropFlip | None = None
    two_view: bool = False
    train_batch_sampler: Callable[..., Any] | None = None
    class_groups: Mapping[str, Sequence[int]] | None = None


class UInt8ImageDataset(Dataset):
    """Images held in memory as a uint8 ``N x H x W x C`` numpy array, as torchvision's CIFAR.

    ``data``/``targets`` have the same names and types as ``torchvision.datasets.CIFAR10``, so
    code written for one works for the other. Items go through ``transform`` as PIL images.
    """

    def __init__(
        self,
        data: np.ndarray,
        targets: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if data.dtype != np.uint8 or data.ndim != 4:
            raise ValueError(f"data must be a uint8 N x H x W x C array, got {data.dtype} {data.shape}")
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} targets")
        self.data = data
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.data[index]
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return (self.transform(pil) if self.transform else pil), self.targets[index]


def subset_indices(targets: Sequence[int], n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """The first ``n`` indices of a fixed, class-interleaved permutation, sorted ascending.

    The permutation is ``np.random.RandomState(seed)`` (a stream numpy guarantees never to
    change), re-ordered round-robin over classes so any prefix is as class-balanced as the data
    allows. The same ``targets`` and ``n`` give the same subset on every machine.
    """
    y = np.asarray(targets)
    if n >= len(y):
        return np.arange(len(y))
    perm = np.random.RandomState(seed).permutation(len(y))
    rank_in_class = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        members = perm[y[perm] == c]
        rank_in_class[members] = np.arange(len(members))
    order = perm[np.argsort(rank_in_class[perm], kind="stable")]
    return np.sort(order[:n])


def take_subset(dataset: Any, n: int | None) -> None:
    """Shrink a CIFAR-like (``data``/``targets``) or ImageFolder dataset in place to ``n`` items."""
    if n is None:
        return
    if n <= 0:
        raise ValueError(f"max samples must be positive, got {n}")
    idx = subset_indices(dataset.targets, n)
    if hasattr(dataset, "samples"):  # ImageFolder
        dataset.samples = [dataset.samples[i] for i in idx]
        dataset.imgs = dataset.samples
    else:
        dataset.data = dataset.data[idx]
    dataset.targets = [dataset.targets[i] for i in idx]


def as_float_tuple(values: Sequence[float]) -> tuple[float, ...]:
    """Plain float tuple from a list/tuple/ListConfig of numbers."""
    return tuple(float(v) for v in values)


def uint8_images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A uint8 ``N x H x W x C`` or ``N x C x H x W`` array as a uint8 ``N x C x H x W`` tensor."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"images must be a uint8 4-d tensor, got {x.dtype} {tuple(x.shape)}")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.permute(0, 3, 1, 2).contiguous()
    if x.shape[1] in (1, 3):
        return x.contiguous()
    raise ValueError(f"cannot tell channels in image shape {tuple(x.shape)}; want 1 or 3")


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    else:
        digest.update(repr(value).encode())


def _split_parts(dataset: Any) -> list[Any]:
    """What identifies one split's content, cheaply: its size, labels, a strided sample of its pixels
    (in-memory data), its files relative to their root (folder data), and the same for its parts."""
    parts: list[Any] = [type(dataset).__name__, len(dataset)]
    if hasattr(dataset, "targets"):
        parts.append(np.asarray(dataset.targets, dtype=np.int64))
    data = getattr(dataset, "data", None)
    if isinstance(data, (np.ndarray, torch.Tensor)) and len(data):
        flat = data.reshape(len(data), -1)
        parts.append(flat[:: max(1, len(flat) // 1024), :: max(1, flat.shape[1] // 256)])
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples:
        root = (
            os.path.commonpath([str(s[0]) for s in samples])
            if len(samples) > 1
            else os.path.dirname(str(samples[0][0]))
        )
        parts.append([(os.path.relpath(str(path), root), int(label)) for path, label in samples])
    for name in ("real", "generated", "dataset"):  # mixed and wrapped data sets
        inner = getattr(dataset, name, None)
        if isinstance(inner, Dataset):
            parts += [name, *_split_parts(inner)]
    if hasattr(dataset, "label_array"):  # memory-mapped generated images: their labels and file sizes
        parts.append(np.asarray(dataset.label_array()))
        parts.append([os.path.getsize(p) for p in getattr(dataset, "paths", [])])
    return parts


def data_fingerprint(datasets: Datasets) -> str:
    """A SHA-256 (16 hex digits) of what the train and test splits hold: the same files and
    subsets give the same value, another copy of the data set (other images, labels or files) does
    not. Read from what the data sets already hold in memory: a second or two for ImageNet."""
    digest = hashlib.sha256()
    for name, split in (("train", datasets.train), ("test", datasets.test)):
        digest.update(name.encode())
        for part in _split_parts(split):
            _feed(digest, part)
    return digest.hexdigest()[:16]
