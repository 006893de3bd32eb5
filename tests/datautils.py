"""Write tiny fake datasets in the real on-disk formats, for tests.

CIFAR: the "python version" pickles (``cifar-10-batches-py/``, ``cifar-100-python/``) as the
official archives hold them. Those were pickled by Python 2, so their dict keys and strings are
Python-2 ``str`` (opcode ``SHORT_BINSTRING``): ``pickle.load(f, encoding="bytes")`` gives
``b"data"`` keys, ``encoding="latin1"`` (what torchvision uses) gives ``"data"``. The writer
below emits exactly those opcodes. Images are uint8 rows of 3072 = R(1024) G(1024) B(1024),
row-major 32 x 32 planes.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


class Py2Str(bytes):
    """A byte string to be pickled as a Python-2 ``str``, as in the official CIFAR files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: Py2Str) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2str


def py2_pickle(obj: object) -> bytes:
    """Pickle (protocol 2) with :class:`Py2Str` written as Python-2 ``str``."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _s(text: str) -> Py2Str:
    return Py2Str(text.encode("latin1"))


def fake_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random uint8 CIFAR rows, shape ``n x 3072``."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` labels cycling through the classes, shuffled."""
    return [int(v) for v in rng.permutation(np.arange(n) % num_classes)]


def _write(path: Path, obj: object) -> None:
    path.write_bytes(py2_pickle(obj))


def _cifar10_batch(label: str, n: int, rng: np.random.Generator) -> dict:
    return {
        _s("batch_label"): _s(label),
        _s("labels"): balanced_labels(n, 10, rng),
        _s("data"): fake_images(n, rng),
        _s("filenames"): [_s(f"img_{i}.png") for i in range(n)],
    }


def write_fake_cifar10(root: Path | str, per_batch: int = 20, test: int = 30, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; returns root."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, 6):
        _write(folder / f"data_batch_{k}", _cifar10_batch(f"training batch {k} of 5", per_batch, rng))
    _write(folder / "test_batch", _cifar10_batch("testing batch 1 of 1", test, rng))
    meta = {
        _s("num_cases_per_batch"): per_batch,
        _s("label_names"): [_s(c) for c in CIFAR10_CLASSES],
        _s("num_vis"): 3072,
    }
    _write(folder / "batches.meta", meta)
    return Path(root)


def _cifar100_split(label: str, n: int, rng: np.random.Generator) -> dict:
    fine = balanced_labels(n, 100, rng)
    return {
        _s("filenames"): [_s(f"img_{i}.png") for i in range(n)],
        _s("batch_label"): _s(label),
        _s("fine_labels"): fine,
        _s("coarse_labels"): [f // 5 for f in fine],
        _s("data"): fake_images(n, rng),
    }


def write_fake_cifar100(root: Path | str, train: int = 200, test: int = 100, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train, test, meta}``; returns root."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "train", _cifar100_split("training batch 1 of 1", train, rng))
    _write(folder / "test", _cifar100_split("testing batch 1 of 1", test, rng))
    meta = {
        _s("fine_label_names"): [_s(f"fine_{i}") for i in range(100)],
        _s("coarse_label_names"): [_s(f"coarse_{i}") for i in range(20)],
    }
    _write(folder / "meta", meta)
    return Path(root)


def write_fake_image_folder(
    root: Path | str,
    classes: int = 3,
    per_class: int = 4,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """``root/class_<k>/<i>.png`` random RGB PNGs of ``size`` (w, h); returns root."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{k}" / f"{i}.png")
    return root


def write_generated_npz(
    path: Path | str,
    n: int,
    num_classes: int,
    *,
    seed: int = 0,
    size: int = 32,
    value: int | None = None,
    compressed: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A generated-data file in DM-AT's format: ``np.savez(image=uint8 N x S x S x 3, label=int64 N)``.

    ``value`` fills every pixel with one grey level (so a test can tell generated from real images
    in a batch); otherwise random pixels. Returns (images, labels).
    """
    rng = np.random.default_rng(seed)
    if value is None:
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    else:
        images = np.full((n, size, size, 3), value, dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    save = np.savez_compressed if compressed else np.savez
    save(path, image=images, label=labels)
    return images, labels
