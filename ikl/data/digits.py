"""scikit-learn's bundled 8x8 digits as a tiny RGB image dataset (no download, CPU smoke runs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from .common import CropFlip, DataError, Datasets, UInt8ImageDataset, as_float_tuple, take_subset
from .transforms import crop_flip, to_tensor

log = logging.getLogger(__name__)

# Statistics of all 1797 images at 32x32 (bilinear upsampling of the 0..16 values scaled to 0..255).
DIGITS_MEAN = (0.3052, 0.3052, 0.3052)
DIGITS_STD = (0.3236, 0.3236, 0.3236)
DIGITS_CROP_PADDING = 2


def load_digits_uint8(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 ``N x S x S x 3`` (grey replicated to RGB) and int64 labels.

    The 0..16 values are scaled to 0..255, bilinearly resized to ``image_size`` and rounded.
    """
    from sklearn.datasets import load_digits  # scikit-learn is only needed for this dataset

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).contiguous().numpy(), np.asarray(bunch.target, dtype=np.int64)


def stratified_split(targets: Sequence[int], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices with ``round(test_fraction * n_c)`` test samples per class.

    Uses ``np.random.RandomState(seed)``, a stream numpy guarantees to keep, so the split is
    identical on every machine and numpy version.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    y = np.asarray(targets)
    rng = np.random.RandomState(seed)
    test = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test.append(members[: int(round(test_fraction * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def digits_datasets(
    *,
    root: str | None = None,
    normalize: bool = False,
    mean: Sequence[float] = DIGITS_MEAN,
    std: Sequence[float] = DIGITS_STD,
    augment: str = "crop",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 32,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Datasets:
    """scikit-learn digits (10 classes) resized to ``image_size`` RGB, fixed stratified split.

    Args:
        root: unused (the data ships with scikit-learn); accepted so every dataset config has it.
        normalize: apply ``Normalize(mean, std)`` in the transforms.
        augment: "crop" (random crop with 2-px zero padding, no flip: digits are not mirror
            symmetric) or "none".
        test_fraction / split_seed: per-class fraction held out, and the split's seed.
        max_train_samples / max_test_samples: deterministic class-balanced subsets.

    ``train.data``/``test.data`` are uint8 ``N x H x W x 3`` arrays and ``.targets`` int lists,
    as torchvision's CIFAR, so :class:`ikl.data.DeviceCIFARLoader` can take them.
    """
    del root
    if augment not in ("none", "crop"):
        raise DataError(f"unknown digits augment {augment!r}; use none or crop")
    mean, std = as_float_tuple(mean), as_float_tuple(std)
    images, labels = load_digits_uint8(image_size)
    train_idx, test_idx = stratified_split(labels, test_fraction, split_seed)
    tail = to_tensor(mean, std, normalize)
    head = crop_flip(image_size, DIGITS_CROP_PADDING, False) if augment == "crop" else []
    train = UInt8ImageDataset(images[train_idx], labels[train_idx], T.Compose(head + tail))
    test = UInt8ImageDataset(images[test_idx], labels[test_idx], T.Compose(tail))
    take_subset(train, max_train_samples)
    take_subset(test, max_test_samples)
    log.info("digits: %d train / %d test images at %dpx", len(train), len(test), image_size)
    aug = CropFlip(DIGITS_CROP_PADDING, False) if augment == "crop" else None
    return Datasets(train, test, 10, mean, std, normalize, crop_flip=aug)
