"""CIFAR-10 / CIFAR-100 through torchvision's own dataset classes (the python pickle format)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torchvision.datasets.utils as tv_utils
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.transforms import Compose

from .common import CropFlip, DataError, Datasets, as_float_tuple, take_subset
from .transforms import cifar_train_transform, to_tensor

log = logging.getLogger(__name__)


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10 with per-file checks reduced to presence.

    torchvision verifies every file's md5 on each construction, which rejects any CIFAR-format
    file other than the official one (test fixtures, re-packed copies). The downloaded archive
    is still md5-checked (``tgz_md5`` is kept); a damaged pickle surfaces as a :class:`DataError`.
    """

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100(CIFAR100):
    """torchvision's CIFAR100 with per-file checks reduced to presence (see :class:`_CIFAR10`)."""

    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = {**CIFAR100.meta, "md5": None}


# name -> (class, display name, classes, mean, std). CIFAR-100 statistics as mdistiller's
# cifar100.py; CIFAR-10 the per-pixel std over the train set (not the common 0.2023 typo).
_CIFAR = {
    "cifar10": (_CIFAR10, "CIFAR-10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (_CIFAR100, "CIFAR-100", 100, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def cifar_files_present(cls: type[CIFAR10], root: str) -> bool:
    """Whether every pickle file torchvision reads for ``cls`` exists under ``root``."""
    names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return all(os.path.isfile(os.path.join(root, cls.base_folder, n)) for n in names)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _ensure_cifar(cls: type[CIFAR10], label: str, root: str, download: bool) -> None:
    """Download ``cls``'s archive into ``root`` if its files are absent; DataError on failure."""
    if cifar_files_present(cls, root):
        return
    folder = os.path.join(root, cls.base_folder)
    fix = f"download it on a machine with network access or set dataset.root=<dir holding {cls.base_folder}>"
    if not download:
        raise DataError(f"{label} not found under {folder} and download=False; {fix}")
    log.info("%s not found under %s; downloading %s", label, folder, cls.url)
    try:
        tv_utils.download_and_extract_archive(cls.url, root, filename=cls.filename, md5=cls.tgz_md5)
    except Exception as err:  # network, disk or checksum: all mean "no usable copy"
        raise DataError(f"{label} not found under {folder} and the download failed ({_one_line(err)}); {fix}") from err
    if not cifar_files_present(cls, root):
        raise DataError(f"{label} download did not produce the files under {folder}; {fix}")


def _open(cls: type[CIFAR10], label: str, root: str, train: bool, transform: Callable) -> Any:
    try:
        return cls(root, train=train, transform=transform, download=False)
    except Exception as err:
        folder = os.path.join(root, cls.base_folder)
        raise DataError(
            f"{label} under {folder} is unreadable ({_one_line(err)}); delete that folder and download it again"
        ) from err


def cifar_datasets(
    *,
    name: str = "cifar100",
    root: str = "./data",
    download: bool = True,
    normalize: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: str = "basic",
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Datasets:
    """CIFAR-10 or CIFAR-100 as torchvision reads it from ``root/cifar-10-batches-py`` or
    ``root/cifar-100-python``.

    Args:
        name: "cifar10" or "cifar100".
        root: directory holding the extracted folder (official IKL-AT code: ``./data/cifar100``).
        download: fetch the archive when the files are absent (never when they are present).
        normalize: apply ``Normalize(mean, std)`` (KD recipe); AT feeds [0, 1] images (False).
        mean / std: default to the dataset's statistics.
        augment: "none", "basic" (RandomCrop(32, 4) + HFlip), or the official two-view schemes
            "autoaug" / "cutout" where train items are ``[basic_view, augmented_view]`` stacked
            into a ``2 x 3 x 32 x 32`` tensor.
        max_train_samples / max_test_samples: deterministic class-balanced subsets.

    Raises:
        DataError: files absent and not downloadable, or unreadable.
    """
    if name not in _CIFAR:
        raise DataError(f"unknown CIFAR name {name!r}; use cifar10 or cifar100")
    cls, label, num_classes, default_mean, default_std = _CIFAR[name]
    mean = as_float_tuple(default_mean if mean is None else mean)
    std = as_float_tuple(default_std if std is None else std)
    root = os.fspath(root)
    train_tf = cifar_train_transform(augment, mean, std, normalize)
    _ensure_cifar(cls, label, root, download)
    train = _open(cls, label, root, True, train_tf)
    test = _open(cls, label, root, False, Compose(to_tensor(mean, std, normalize)))
    take_subset(train, max_train_samples)
    take_subset(test, max_test_samples)
    log.info("%s: %d train / %d test images, augment=%s", label, len(train), len(test), augment)
    crop = CropFlip(4, True) if augment == "basic" else None
    return Datasets(
        train,
        test,
        num_classes,
        mean,
        std,
        normalize,
        crop_flip=crop,
        two_view=augment in ("autoaug", "cutout"),
    )
