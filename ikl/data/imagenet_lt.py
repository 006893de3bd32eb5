"""ImageNet-LT (Liu et al., OLTR, CVPR 2019) from its standard split files over an ImageNet tree.

The split files ``ImageNet_LT_train.txt`` (115,846 images, 1,280 down to 5 per class),
``ImageNet_LT_val.txt`` (20,000) and ``ImageNet_LT_test.txt`` (50,000, 50 per class) list one
image per line as ``<path relative to the ImageNet root> <label>``, e.g.
``train/n01440764/n01440764_762.JPEG 0`` or ``val/n01440764/ILSVRC2012_val_00029930.JPEG 0``
(the test split is drawn from ImageNet's validation images, sorted into class folders). They
ship with the OLTR code and with the official IKL code (``jiequancui/DKL``
``DKLv1/Imbalanced_KD-dkl/imagenet_inat/data/ImageNet_LT/``).

The official IKL ImageNet-LT script (``imagenetlt_distill_dkl.py``, dataset
``dataset/imagenet.py`` ``ImageNetLT``) trains on the train split and evaluates on the *test*
split every epoch (the val split is unused), with the ``regular`` augmentation (random resized
crop 224 + flip, ImageNet mean/std; test: resize 256, centre crop 224). Its per-group accuracies
use the train split's images per class (:mod:`ikl.data.long_tail`); the bundle returned here
carries those groups, so every evaluation reports them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from .common import DataError, Datasets, as_float_tuple, take_subset
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, _readable, imagenet_transforms
from .long_tail import FEW_SHOT_THRESHOLD, MANY_SHOT_THRESHOLD, class_counts, shot_groups

log = logging.getLogger(__name__)

SPLIT_FILE = "ImageNet_LT_{split}.txt"
WHERE_SPLITS = (
    "the split files come with the OLTR release and with jiequancui/DKL "
    "(DKLv1/Imbalanced_KD-dkl/imagenet_inat/data/ImageNet_LT/); set dataset.builder.split_dir=<dir holding them>"
)


def read_split_file(path: str | os.PathLike, num_classes: int) -> list[tuple[str, int]]:
    """``(relative path, label)`` per non-empty line of a ``<path> <label>`` split file.

    Raises:
        DataError: the file is missing, a line is not ``<path> <label>``, or a label is outside
            ``[0, num_classes)`` (one line naming the file and line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist; {WHERE_SPLITS}")
    entries: list[tuple[str, int]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataError(f"{path} line {number} is {line.strip()!r}, not '<relative path> <label>'")
            label = int(fields[1])
            if not 0 <= label < num_classes:
                raise DataError(
                    f"{path} line {number}: label {label} is outside [0, {num_classes}); "
                    "set dataset.num_classes and dataset.builder.num_classes to the split's class count"
                )
            entries.append((fields[0], label))
    if not entries:
        raise DataError(f"split file {path} lists no images; {WHERE_SPLITS}")
    return entries


class SplitFileDataset(Dataset):
    """Images listed in a split file, loaded as RGB PIL images and passed through ``transform``.

    ``samples`` (absolute path, label) and ``targets`` have the names and types of torchvision's
    ``ImageFolder``, so subsetting and samplers treat both alike.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split_file: str | os.PathLike,
        *,
        num_classes: int,
        transform: Callable[[Image.Image], Any] | None = None,
        skip_bad_images: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split_file = Path(split_file)
        self.samples = [(str(self.root / rel), label) for rel, label in read_split_file(self.split_file, num_classes)]
        if skip_bad_images:  # every file checked once (PIL's header check), unreadable ones left out
            good = [(path, label) for path, label in self.samples if _readable(path)]
            if len(good) < len(self.samples):
                log.warning("%s: skipping %d unreadable image files", self.split_file, len(self.samples) - len(good))
            self.samples = good
        self.imgs = self.samples
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as handle:
                image = Image.open(handle).convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for a missing, damaged or non-image file
            raise DataError(
                f"cannot read {path} (listed in {self.split_file}): {getattr(err, 'strerror', None) or err}; check "
                "dataset.builder.root (the ImageNet folder the split's paths are relative to), or set "
                "dataset.builder.skip_bad_images=true"
            ) from err
        return (self.transform(image) if self.transform else image), label


def _check_root(dataset: SplitFileDataset, split: str) -> None:
    """The first and last listed images exist: a wrong root fails here, not mid-epoch."""
    for path, _ in (dataset.samples[0], dataset.samples[-1]):
        if not os.path.isfile(path):
            raise DataError(
                f"{path} (listed in {dataset.split_file}) does not exist: the {split} split's paths are relative "
                "to dataset.builder.root, which must be the ImageNet folder holding train/ and val/"
            )


def imagenet_lt_datasets(
    *,
    root: str,
    split_dir: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    num_classes: int = 1000,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    augment: str = "basic",
    timm_train: Mapping[str, Any] | None = None,
    timm_test: Mapping[str, Any] | None = None,
    many_threshold: int = MANY_SHOT_THRESHOLD,
    few_threshold: int = FEW_SHOT_THRESHOLD,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    skip_bad_images: bool = False,
) -> Datasets:
    """ImageNet-LT: train on ``ImageNet_LT_<train_split>.txt``, evaluate on ``..._<test_split>.txt``.

    Args:
        root: the ImageNet folder the split files' paths are relative to (holds ``train/``, ``val/``).
        split_dir: folder of the ``ImageNet_LT_*.txt`` files (default: ``root``).
        train_split / test_split: which files (the official script: train and test; "val" for model
            selection on the 20k held-out split).
        num_classes: labels must lie in ``[0, num_classes)``.
        augment / timm_train / timm_test: as :func:`ikl.data.imagenet.imagenet_transforms`
            ("basic" is the official ``regular`` augmentation).
        many_threshold / few_threshold: the shot groups (:func:`ikl.data.long_tail.shot_groups`),
            counted on the training images actually used (after ``max_train_samples``).
        max_train_samples / max_test_samples: deterministic class-balanced subsets.
        skip_bad_images: check every listed file once and leave the unreadable ones out (otherwise
            one stops the run with a line naming it).

    Raises:
        DataError: a split file is missing or malformed, or its first/last image is not under ``root``.
    """
    mean, std = as_float_tuple(mean), as_float_tuple(std)
    root_path = Path(os.fspath(root))
    if not root_path.is_dir():
        raise DataError(f"ImageNet root {root_path} does not exist; set dataset.builder.root=<ImageNet folder>")
    splits = Path(os.fspath(split_dir)) if split_dir else root_path
    train_tf, test_tf = imagenet_transforms(
        image_size, mean, std, normalize, augment=augment, timm_train=timm_train, timm_test=timm_test
    )
    datasets = {}
    for split, name, transform in (("train", train_split, train_tf), ("test", test_split, test_tf)):
        ds = SplitFileDataset(
            root_path,
            splits / SPLIT_FILE.format(split=name),
            num_classes=num_classes,
            transform=transform,
            skip_bad_images=skip_bad_images,
        )
        _check_root(ds, name)
        datasets[split] = ds
    take_subset(datasets["train"], max_train_samples)
    take_subset(datasets["test"], max_test_samples)
    counts = class_counts(datasets["train"].targets, num_classes)
    groups = shot_groups(counts, many_threshold=many_threshold, few_threshold=few_threshold)
    if (counts == 0).any():
        log.warning("ImageNet-LT: %d of %d classes have no training image", int((counts == 0).sum()), num_classes)
    log.info(
        "ImageNet-LT: %d train (%d..%d per class) / %d test images; %s",
        len(datasets["train"]),
        int(counts.min()),
        int(counts.max()),
        len(datasets["test"]),
        ", ".join(f"{len(v)} {k}-shot classes" for k, v in groups.items()),
    )
    return Datasets(datasets["train"], datasets["test"], num_classes, mean, std, normalize, class_groups=groups)
