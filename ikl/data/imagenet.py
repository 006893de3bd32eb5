"""ImageNet-style class-folder datasets (``root/<class>/<image>``) via torchvision ImageFolder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from .common import DataError, Datasets, as_float_tuple, take_subset
from .transforms import to_tensor

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckedImageFolder(ImageFolder):
    """``ImageFolder`` whose unreadable image is one :class:`DataError` line naming the file.

    With ``skip_bad_images`` every file is checked once when the data set is built (PIL's header
    check; a few minutes for ImageNet) and the unreadable ones are left out, with their count logged.
    """

    def __init__(self, root: str, transform: Callable[[Any], Any], *, skip_bad_images: bool = False) -> None:
        super().__init__(root, transform=transform)
        if skip_bad_images:
            good = [(path, label) for path, label in self.samples if _readable(path)]
            if len(good) < len(self.samples):
                log.warning("%s: skipping %d unreadable image files", root, len(self.samples) - len(good))
            self.samples = self.imgs = good
            self.targets = [label for _, label in good]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, _ = self.samples[index]
        try:
            return super().__getitem__(index)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for a damaged or non-image file
            raise DataError(
                f"{path} cannot be read as an image ({type(err).__name__}); replace or remove it, or set "
                "dataset.builder.skip_bad_images=true to leave such files out"
            ) from err


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def _image_folder(root: str, split: str, transform: Callable[[Any], Any], skip_bad_images: bool = False) -> ImageFolder:
    key = f"dataset.builder.{split}_root"
    if not os.path.isdir(root):
        raise DataError(
            f"ImageNet {split} folder {root} does not exist; set {key}=<dir with one sub-folder of images per class>"
        )
    try:
        return CheckedImageFolder(root, transform, skip_bad_images=skip_bad_images)
    except (FileNotFoundError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"ImageNet {split} folder {root} holds no usable class folders ({first}); set "
            f"{key}=<dir with one sub-folder of images per class>"
        ) from err


def imagenet_datasets(
    *,
    train_root: str,
    val_root: str,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    skip_bad_images: bool = False,
) -> Datasets:
    """ImageNet from class folders, with mdistiller's recipe.

    Train: ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``. Val:
    ``Resize(image_size * 256 / 224)`` + ``CenterCrop(image_size)`` (256/224 at the default).
    ``num_classes`` is the number of class folders under ``train_root``; ``val_root`` must hold
    the same class folders. An unreadable image stops the run with one line naming it, or, with
    ``skip_bad_images``, is left out when the data set is built (the count is logged).

    Raises:
        DataError: a root is missing or has no class folders, or the two roots' classes differ.
    """
    mean, std = as_float_tuple(mean), as_float_tuple(std)
    tail = to_tensor(mean, std, normalize)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *tail])
    resize = int(round(image_size * 256 / 224))
    val_tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), *tail])
    train = _image_folder(os.fspath(train_root), "train", train_tf, skip_bad_images)
    test = _image_folder(os.fspath(val_root), "val", val_tf, skip_bad_images)
    if train.classes != test.classes:
        raise DataError(
            f"class folders differ between {train_root} ({len(train.classes)}) and {val_root} "
            f"({len(test.classes)}); both roots need the same class sub-folders"
        )
    take_subset(train, max_train_samples)
    take_subset(test, max_test_samples)
    log.info("ImageNet: %d classes, %d train / %d val", len(train.classes), len(train), len(test))
    return Datasets(train, test, len(train.classes), mean, std, normalize)
