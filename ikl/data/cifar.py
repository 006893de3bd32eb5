"""CIFAR-10 / CIFAR-100 through torchvision's own dataset classes (the python pickle format)."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torchvision.datasets.utils as tv_utils
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.transforms import Compose

from .common import CropFlip, DataError, Datasets, as_float_tuple, take_subset
from .safe_pickle import load_pickle
from .transforms import cifar_train_transform, to_tensor

log = logging.getLogger(__name__)


class _SafeCIFAR:
    """torchvision's CIFAR dataset, its pickles read by :func:`load_pickle` (never ``pickle.load``).

    torchvision's own constructor unpickles every file with the full pickle machinery (a crafted
    file runs code) and md5-checks each, which rejects any CIFAR-format file other than the
    official one (test fixtures, re-packed copies); the downloaded archive is still md5-checked
    (``tgz_md5`` is kept). Every file is checked for its format and its labels for their range:
    a bad file is one :class:`DataError` line naming it.
    """

    num_classes: int
    label_key: str

    def __init__(self, root: str, train: bool = True, transform: Callable | None = None, **_: Any) -> None:
        VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        data, targets = [], []
        for name, _md5 in self.train_list if train else self.test_list:
            path = os.path.join(self.root, self.base_folder, name)
            rows, labels = self._read_batch(path)
            data.append(rows)
            targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = targets
        self._load_meta()

    def _read_batch(self, path: str) -> tuple[np.ndarray, list[int]]:
        entry = load_pickle(path)
        if not isinstance(entry, dict) or "data" not in entry or self.label_key not in entry:
            raise DataError(
                f"{path} is not a CIFAR batch (a dict with 'data' and '{self.label_key}'); download it again"
            )
        rows, labels = entry["data"], entry[self.label_key]
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
            raise DataError(f"{path}: 'data' is not uint8 rows of 3072 pixels; download the data set again")
        if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(rows):
            raise DataError(f"{path}: {len(rows)} images but a label list of another length; download it again")
        labels = [int(v) for v in labels]
        bad = [v for v in labels if not 0 <= v < self.num_classes]
        if bad:
            raise DataError(
                f"{path}: label {bad[0]} is outside [0, {self.num_classes}) ({len(bad)} such labels); "
                "the file is damaged or of another data set"
            )
        return rows, labels

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        meta = load_pickle(path)
        if not isinstance(meta, dict) or not isinstance(meta.get(self.meta["key"]), list):
            raise DataError(f"{path} is not CIFAR meta data (no '{self.meta['key']}' list); download it again")
        self.classes = [str(c) for c in meta[self.meta["key"]]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR10(_SafeCIFAR, CIFAR10):
    num_classes, label_key = 10, "labels"
    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100(_SafeCIFAR, CIFAR100):
    num_classes, label_key = 100, "fine_labels"
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


def _lock_downloads(root: str, name: str, label: str, fix: str) -> int:
    """Take ``<root>/.<name>.download.lock`` (flock, blocking) and return its descriptor; closing
    it releases the lock. One process downloads and extracts, the others (DDP ranks of this node,
    a second run started at the same time) wait and then find the files; the kernel drops the
    lock of a holder that died, even by SIGKILL."""
    fd = None
    try:
        os.makedirs(root, exist_ok=True)
        fd = os.open(os.path.join(root, f".{name}.download.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # (a mount without locks raises here: one line too)
    except OSError as err:
        if fd is not None:
            os.close(fd)
        raise DataError(f"cannot download {label} into {root} ({_one_line(err)}); {fix}") from err
    return fd


def _ensure_cifar(cls: type[CIFAR10], label: str, root: str, download: bool) -> None:
    """Download ``cls``'s archive into ``root`` if its files are absent; DataError on failure."""
    if cifar_files_present(cls, root):
        return
    folder = os.path.join(root, cls.base_folder)
    fix = f"download it on a machine with network access or set dataset.builder.root=<dir holding {cls.base_folder}>"
    if not download:
        raise DataError(f"{label} not found under {folder} and download=False; {fix}")
    fd = _lock_downloads(root, cls.base_folder, label, fix)
    try:
        if not cifar_files_present(cls, root):  # (another process may have fetched it meanwhile)
            _download_cifar(cls, label, root, folder, fix)
    finally:
        os.close(fd)


def _download_cifar(cls: type[CIFAR10], label: str, root: str, folder: str, fix: str) -> None:
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
    except DataError:
        raise
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
