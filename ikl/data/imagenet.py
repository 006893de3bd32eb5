"""ImageNet-style class-folder datasets (``root/<class>/<image>``) via torchvision ImageFolder.

Two train/test pipelines (:func:`imagenet_transforms`): ``augment="basic"`` is mdistiller's (and
the official ImageNet-LT code's) torchvision ``RandomResizedCrop`` + flip with a 256/224 resize
and centre crop for testing; ``augment="timm"`` builds both with ``timm.data.create_transform``
(RandAugment, random interpolation, random erasing, test ``crop_pct``, ...: the "strong" recipes of
timm's ResNet-strikes-back family), its arguments given as ``timm_train`` / ``timm_test``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
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
            image.load()  # a full decode: verify() passes a truncated JPEG that loading then fails on
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


def imagenet_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    normalize: bool,
    *,
    augment: str = "basic",
    timm_train: Mapping[str, Any] | None = None,
    timm_test: Mapping[str, Any] | None = None,
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(train, test) transforms of PIL images to ``C x H x W`` tensors.

    ``augment="basic"``: train ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip``; test
    ``Resize(image_size * 256 / 224)`` + ``CenterCrop(image_size)``, bilinear (mdistiller, and the
    official ImageNet-LT script's ``regular`` augmentation). ``augment="timm"``:
    ``timm.data.create_transform(image_size, is_training=..., mean, std, **timm_train|timm_test)``,
    e.g. ``timm_train={"auto_augment": "rand-m7-mstd0.5", "interpolation": "random"}`` and
    ``timm_test={"crop_pct": 0.95, "interpolation": "bicubic"}``. ``normalize=False`` leaves [0, 1].
    """
    mean, std = as_float_tuple(mean), as_float_tuple(std)
    if augment == "basic":
        if timm_train or timm_test:
            raise DataError("timm_train / timm_test apply to augment=timm only; set dataset.builder.augment=timm")
        tail = to_tensor(mean, std, normalize)
        train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *tail])
        resize = int(round(image_size * 256 / 224))
        return train_tf, T.Compose([T.Resize(resize), T.CenterCrop(image_size), *tail])
    if augment != "timm":
        raise DataError(f"unknown ImageNet augment {augment!r}; use basic or timm")
    from timm.data import create_transform  # timm is needed only for this pipeline

    def build(is_training: bool, options: Mapping[str, Any] | None) -> Callable[[Any], Any]:
        # config lists (scale, ratio, color_jitter) as tuples, the types timm documents
        kwargs = {
            str(k): tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
            for k, v in (options or {}).items()
        }
        try:
            return create_transform(
                image_size, is_training=is_training, mean=mean, std=std, normalize=normalize, **kwargs
            )
        except (TypeError, ValueError, AssertionError) as err:
            which = "timm_train" if is_training else "timm_test"
            raise DataError(f"dataset.builder.{which} is not valid for timm.data.create_transform: {err}") from err

    return build(True, timm_train), build(False, timm_test)


def imagenet_datasets(
    *,
    train_root: str,
    val_root: str,
    normalize: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    image_size: int = 224,
    augment: str = "basic",
    timm_train: Mapping[str, Any] | None = None,
    timm_test: Mapping[str, Any] | None = None,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    skip_bad_images: bool = False,
) -> Datasets:
    """ImageNet from class folders, with mdistiller's recipe (or a timm pipeline, see
    :func:`imagenet_transforms`).

    ``num_classes`` is the number of class folders under ``train_root``; ``val_root`` must hold
    the same class folders. An unreadable image stops the run with one line naming it, or, with
    ``skip_bad_images``, is left out when the data set is built (the count is logged).

    Raises:
        DataError: a root is missing or has no class folders, or the two roots' classes differ.
    """
    mean, std = as_float_tuple(mean), as_float_tuple(std)
    train_tf, val_tf = imagenet_transforms(
        image_size, mean, std, normalize, augment=augment, timm_train=timm_train, timm_test=timm_test
    )
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
