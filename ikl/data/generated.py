"""Generated training images (DM-AT's ``.npz`` format), memory-mapped and mixed into every batch.

Wang et al. 2023 (``wzekai99/DM-Improves-AT``, b390f25) train on CIFAR plus 1M-50M EDM-generated
images stored as ``np.savez`` files with two members: ``image`` (uint8 ``N x 32 x 32 x 3``) and
``label`` (integers). The 20M/50M sets come in parts (``50m_part1.npz`` ...); DM-AT's
``merge-data.py`` concatenates them in memory (150 GB for 50M images); here ``path`` takes the list
of parts instead and nothing is merged.

**Memory.** ``np.load(..., mmap_mode="r")`` does not map the arrays inside an ``.npz``. A file that
``np.savez`` wrote stores each ``.npy`` member uncompressed, so :func:`open_npz_arrays` finds each
member's data by its offset in the zip and maps it with ``np.memmap``: no image is read before a
batch asks for it, and worker processes re-open the map instead of pickling it. A compressed file
(``np.savez_compressed``) cannot be mapped and is refused with one line;
``python -m ikl.data.generated convert IN.npz OUT.npz`` rewrites it uncompressed, streaming.

**Mixing** (DM-AT ``core/data/semisup.py`` ``SemiSupervisedSampler`` with
``get_semisup_dataloaders``): an epoch is ``ceil(epoch_size / batch_size)`` batches, where
``epoch_size`` defaults to the real training set's size (DM-AT: the 50 000 CIFAR images), however
many generated images there are. Every batch holds ``batch_size - int(batch_size * generated_fraction)``
real images (DM-AT ``--unsup-fraction``, 0.7 by default: 154 real + 358 generated at batch 512),
taken in order from a shuffled pass over the real set, and is filled up to ``batch_size`` with
generated images drawn uniformly *with replacement* (DM-AT ``torch.randint``). A pass over the real
set is chunked on its own, so its last chunk is short and that batch gets more generated images;
when a pass is used up within an epoch a new shuffled pass starts; every epoch starts a fresh pass
(DM-AT re-enters its sampler each epoch). ``sampling="without_replacement"`` draws the generated
images of an epoch without repeats instead (a deviation, offered for small generated sets).

**Resume and DDP.** The order of epoch ``e`` is a pure function of (seed, e, rank): the real
passes come from ``SeedSequence([seed, e, 0])`` on every rank, rank ``r``'s generated draws from
``SeedSequence([seed, e, 1, r])`` (DM-AT uses torch's and numpy's global RNGs, so its order cannot be
replayed). A resumed run that calls ``set_epoch(e)`` and skips the finished batches sees exactly the
batches an uninterrupted run saw. Under ``world_size`` W each rank loads ``batch_size / W`` images
per step: the global batch's real chunk is dealt round-robin (rank ``r`` takes ``chunk[r::W]``), and
each rank fills its share with generated images from its own shard (indices ``r, r + W, ...``).
So the ranks' batches together hold the single-process real chunk, every rank holds the same
real/generated ratio to within one image, and no image of either source is on two ranks in a step
or an epoch (with replacement an image can repeat within a rank, as in DM-AT's single process).
"""

from __future__ import annotations

import argparse
import bisect
import logging
import math
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .common import DataError, Datasets

log = logging.getLogger(__name__)

SAMPLING = ("with_replacement", "without_replacement")
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_SIGNATURE = 0x04034B50
_LABEL_CHUNK = 1 << 22


# ---------------------------------------------------------------------------- the .npz members
@dataclass(frozen=True)
class ArraySpec:
    """Where one uncompressed ``.npy`` member's data sits in a file, and how to view it."""

    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    fortran_order: bool

    def open(self) -> np.memmap:
        return np.memmap(
            self.path,
            dtype=np.dtype(self.dtype),
            mode="r",
            offset=self.offset,
            shape=self.shape,
            order="F" if self.fortran_order else "C",
        )


def _convert_hint(path: str) -> str:
    return f"python -m ikl.data.generated convert {path} <uncompressed.npz>"


def _member_spec(path: str, handle: Any, info: zipfile.ZipInfo) -> ArraySpec:
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(
            f"{path}: member {info.filename} is compressed (np.savez_compressed), so it cannot be memory-mapped; "
            f"rewrite it uncompressed once with: {_convert_hint(path)}"
        )
    if info.flag_bits & 0x1:
        raise DataError(f"{path}: member {info.filename} is encrypted; store it as a plain np.savez file")
    handle.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
    if fields[0] != _LOCAL_SIGNATURE:
        raise DataError(f"{path}: damaged zip (no local header for {info.filename}); download the file again")
    name_len, extra_len = fields[9], fields[10]
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    handle.seek(start)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"npy format version {version}")
    except ValueError as err:
        raise DataError(f"{path}: member {info.filename} is not a .npy array ({err}); write it with np.savez") from err
    if dtype.hasobject:
        raise DataError(f"{path}: member {info.filename} holds Python objects; store numeric arrays only")
    offset = handle.tell()
    expected = math.prod(shape) * dtype.itemsize
    if offset - start + expected > info.file_size:
        raise DataError(f"{path}: member {info.filename} is truncated; download the file again")
    return ArraySpec(path, offset, tuple(int(s) for s in shape), dtype.str, bool(fortran))


def open_npz_arrays(path: str | os.PathLike, names: Sequence[str] = ("image", "label")) -> dict[str, ArraySpec]:
    """Locate the named members of an uncompressed ``.npz`` (no data is read); ``ArraySpec.open()`` maps one.

    Raises :class:`DataError` (one line) for a missing, unreadable or compressed file or member.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"generated data {path} not found; download DM-AT's .npz (docs/reproduce.md) or set its path")
    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            members = {info.filename: info for info in archive.infolist()}
            specs = {}
            for name in names:
                info = members.get(f"{name}.npy")
                if info is None:
                    found = ", ".join(sorted(m.removesuffix(".npy") for m in members)) or "nothing"
                    raise DataError(
                        f"{path} has no {name!r} array (it holds {found}); DM-AT's format is np.savez(image=, label=)"
                    )
                specs[name] = _member_spec(path, handle, info)
    except zipfile.BadZipFile as err:
        raise DataError(
            f"{path} is not an .npz (zip) file ({err}); DM-AT's format is np.savez(image=, label=)"
        ) from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    return specs


def convert_npz(source: str | os.PathLike, target: str | os.PathLike, chunk_bytes: int = 1 << 26) -> None:
    """Rewrite an ``.npz`` with every member stored uncompressed (streaming; any size fits in memory)."""
    source, target = os.fspath(source), os.fspath(target)
    if os.path.abspath(source) == os.path.abspath(target):
        raise DataError("convert: the output must be a new file, not the input")
    partial_target = f"{target}.partial"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(partial_target, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            out_info = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            out_info.compress_type = zipfile.ZIP_STORED
            with src.open(info) as reader, dst.open(out_info, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, chunk_bytes)
    os.replace(partial_target, target)


# ---------------------------------------------------------------------------- the generated images
class GeneratedImages(Dataset):
    """Memory-mapped generated images and labels from one or more DM-AT ``.npz`` files.

    Items are ``(transform(PIL image), label)`` as the real training set's. ``indices`` (sorted)
    restricts the set to a subset. Maps are opened lazily in each process and never pickled.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        num_classes: int,
        image_size: tuple[int, int] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        indices: np.ndarray | None = None,
    ) -> None:
        self.paths = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if not self.paths:
            raise DataError("dataset.builder.path lists no generated .npz file")
        self.transform = transform
        self.specs: list[tuple[ArraySpec, ArraySpec]] = []
        for path in self.paths:
            specs = open_npz_arrays(path)
            image, label = specs["image"], specs["label"]
            _check_images(path, image, image_size)
            _check_labels(path, label, image.shape[0], num_classes)
            self.specs.append((image, label))
        self.file_starts = np.cumsum([0] + [image.shape[0] for image, _ in self.specs]).tolist()
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self._maps: list[tuple[np.memmap, np.memmap]] | None = None

    @property
    def total(self) -> int:
        """Images in the files (before ``indices``)."""
        return int(self.file_starts[-1])

    def __len__(self) -> int:
        return self.total if self.indices is None else len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}  # workers map the files again

    def _arrays(self) -> list[tuple[np.memmap, np.memmap]]:
        if self._maps is None:
            self._maps = [(image.open(), label.open()) for image, label in self.specs]
        return self._maps

    def locate(self, index: int) -> tuple[int, int]:
        """(file number, row in that file) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"generated image {index} out of range for {len(self)}")
        row = int(index if self.indices is None else self.indices[index])
        part = bisect.bisect_right(self.file_starts, row) - 1
        return part, row - self.file_starts[part]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        part, row = self.locate(index)
        images, labels = self._arrays()[part]
        pixels = np.array(images[row])
        pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        return (self.transform(pil) if self.transform else pil), int(labels[row])

    def label_array(self) -> np.ndarray:
        """All labels (``indices`` applied) as an int64 array (reads the label members)."""
        labels = np.concatenate([np.asarray(label.open(), dtype=np.int64) for _, label in self.specs])
        return labels if self.indices is None else labels[self.indices]


def _check_images(path: str, spec: ArraySpec, image_size: tuple[int, int] | None) -> None:
    shape = spec.shape
    if np.dtype(spec.dtype) != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: 'image' is {np.dtype(spec.dtype)} {shape}; DM-AT's format is uint8 N x H x W x 3 (channels last)"
        )
    if spec.fortran_order:
        raise DataError(f"{path}: 'image' is stored in Fortran order; save a C-contiguous array")
    if image_size is not None and tuple(shape[1:3]) != tuple(image_size):
        raise DataError(
            f"{path}: images are {shape[1]}x{shape[2]} but the real training images are {image_size[0]}x{image_size[1]}"
        )


def _check_labels(path: str, spec: ArraySpec, count: int, num_classes: int) -> None:
    if len(spec.shape) != 1 or not np.issubdtype(np.dtype(spec.dtype), np.integer):
        raise DataError(
            f"{path}: 'label' is {np.dtype(spec.dtype)} {spec.shape}; want integer class ids, one per image"
        )
    if spec.shape[0] != count:
        raise DataError(f"{path}: {count} images but {spec.shape[0]} labels")
    labels = spec.open()
    low, high = 0, -1
    for start in range(0, count, _LABEL_CHUNK):
        chunk = labels[start : start + _LABEL_CHUNK]
        low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
    if low < 0 or high >= num_classes:
        raise DataError(f"{path}: labels span [{low}, {high}] but the data set has {num_classes} classes")


class MixedTrainSet(Dataset):
    """Real training set (indices ``0 .. n_real-1``) followed by generated images (``n_real ..``)."""

    def __init__(self, real: Dataset, generated: GeneratedImages) -> None:
        self.real = real
        self.generated = generated
        self.num_real = len(real)
        self.num_generated = len(generated)

    def __len__(self) -> int:
        return self.num_real + self.num_generated

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if index < self.num_real:
            return self.real[index]
        return self.generated[index - self.num_real]


# ---------------------------------------------------------------------------- the batch sampler
def real_per_batch(batch_size: int, generated_fraction: float) -> int:
    """Real images in a (global) batch: ``batch_size - int(batch_size * fraction)`` as DM-AT."""
    return batch_size - int(batch_size * generated_fraction)


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of real + generated indices with DM-AT's composition; see the module docstring.

    Indices ``< num_real`` are real images, ``num_real + j`` generated image ``j`` (as
    :class:`MixedTrainSet`). ``batch_size`` is the GLOBAL batch; rank ``rank`` of ``world_size``
    yields its ``batch_size / world_size`` share. Call :meth:`set_epoch` every epoch.
    """

    def __init__(
        self,
        num_real: int,
        num_generated: int,
        *,
        batch_size: int,
        generated_fraction: float = 0.7,
        epoch_size: int | None = None,
        sampling: str = "with_replacement",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0.0 <= generated_fraction < 1.0:
            raise DataError(f"generated_fraction={generated_fraction} must be in [0, 1) (DM-AT --unsup-fraction)")
        if sampling not in SAMPLING:
            raise DataError(f"sampling={sampling!r} is not one of {', '.join(SAMPLING)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if batch_size <= 0 or batch_size % world_size:
            raise DataError(
                f"batch_size={batch_size} is the global batch and must be a multiple of world_size={world_size}"
            )
        if num_real <= 0:
            raise DataError("the real training set is empty")
        self.num_real, self.num_generated = num_real, num_generated
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.per_rank = batch_size // world_size
        self.generated_fraction = generated_fraction
        self.real_per_batch = real_per_batch(batch_size, generated_fraction)
        if self.real_per_batch < batch_size and num_generated < world_size:
            raise DataError(f"{num_generated} generated images cannot fill batches on {world_size} ranks")
        self.epoch_size = num_real if epoch_size is None else int(epoch_size)
        if self.epoch_size <= 0:
            raise DataError(f"epoch_size={epoch_size} must be positive")
        self.num_batches = math.ceil(self.epoch_size / batch_size)
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self.shard = range(rank, num_generated, world_size)  # this rank's generated images
        if sampling == "without_replacement":
            needed = sum(self.per_rank - len(c[rank::world_size]) for c in self.real_chunks(0))
            if needed > len(self.shard):
                raise DataError(
                    f"an epoch draws {needed} generated images per rank but the rank's shard holds {len(self.shard)}; "
                    "use sampling=with_replacement or more generated data"
                )

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def real_chunks(self, epoch: int) -> list[np.ndarray]:
        """The global real chunk of every batch of ``epoch`` (identical on every rank)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0]))
        chunks: list[np.ndarray] = []
        while len(chunks) < self.num_batches:
            order = rng.permutation(self.num_real)
            for start in range(0, self.num_real, self.real_per_batch):
                chunks.append(order[start : start + self.real_per_batch])
                if len(chunks) == self.num_batches:
                    break
        return chunks

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch`` as dataset indices."""
        chunks = [c[self.rank :: self.world_size] for c in self.real_chunks(epoch)]
        fills = [self.per_rank - len(c) for c in chunks]
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 1, self.rank]))
        total = sum(fills)
        if total and self.sampling == "with_replacement":
            picks = rng.integers(0, len(self.shard), size=total)
        elif total:
            picks = rng.choice(len(self.shard), size=total, replace=False)
        else:
            picks = np.zeros(0, dtype=np.int64)
        generated = self.num_real + self.rank + self.world_size * picks.astype(np.int64)
        out, used = [], 0
        for chunk, fill in zip(chunks, fills, strict=True):
            out.append(chunk.tolist() + generated[used : used + fill].tolist())
            used += fill
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))


# ---------------------------------------------------------------------------- the builder
def generated_datasets(
    *,
    real: Callable[..., Datasets],
    path: str | Sequence[str],
    generated_fraction: float = 0.7,
    epoch_size: int | None = None,
    sampling: str = "with_replacement",
    max_generated_samples: int | None = None,
    take_seed: int = 13,
    normalize: bool = False,
    augment: str = "basic",
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Datasets:
    """Real train/test sets from ``real(normalize=, augment=, max_train_samples=, max_test_samples=)``
    with generated images from ``path`` (one ``.npz`` or a list of parts) mixed into every train batch.

    Args:
        real: builder of the real data (a ``_partial_`` dataset builder, e.g. ``cifar_datasets``).
        path: DM-AT ``.npz`` file(s) with ``image`` uint8 ``N x H x W x 3`` and ``label``.
        generated_fraction: generated share of each batch (DM-AT ``--unsup-fraction``, default 0.7).
        epoch_size: images per epoch; batches per epoch = ceil(epoch_size / batch_size). ``None``:
            the real training set's size (DM-AT: 50 000).
        sampling: ``with_replacement`` (DM-AT) or ``without_replacement`` within an epoch.
        max_generated_samples: keep a random subset of this many generated images, drawn with
            ``RandomState(take_seed)`` (DM-AT ``aux_take_amount``, seed 13).
        normalize, augment, max_train_samples, max_test_samples: passed to ``real``; the generated
            images go through the real training set's transform (DM-AT applies one transform to both).

    The returned bundle's ``train`` is a :class:`MixedTrainSet` and ``train_batch_sampler`` makes
    the :class:`MixedBatchSampler` that :func:`ikl.data.build_loaders` uses.
    """
    datasets = real(
        normalize=normalize, augment=augment, max_train_samples=max_train_samples, max_test_samples=max_test_samples
    )
    transform = getattr(datasets.train, "transform", None)
    raw = getattr(datasets.train, "data", None)  # torchvision CIFAR / UInt8ImageDataset: N x H x W x C
    image_size = tuple(raw.shape[1:3]) if isinstance(raw, np.ndarray) and raw.ndim == 4 else None
    generated = GeneratedImages(path, num_classes=datasets.num_classes, image_size=image_size, transform=transform)
    if max_generated_samples is not None:
        if max_generated_samples <= 0:
            raise DataError(f"max_generated_samples={max_generated_samples} must be positive")
        if max_generated_samples < generated.total:
            take = np.random.RandomState(take_seed).choice(generated.total, max_generated_samples, replace=False)
            generated.indices = np.sort(take)
    if not 0.0 <= generated_fraction < 1.0:
        raise DataError(f"generated_fraction={generated_fraction} must be in [0, 1) (DM-AT --unsup-fraction)")
    if sampling not in SAMPLING:
        raise DataError(f"sampling={sampling!r} is not one of {', '.join(SAMPLING)}")
    train = MixedTrainSet(datasets.train, generated)
    factory = partial(
        MixedBatchSampler,
        train.num_real,
        train.num_generated,
        generated_fraction=generated_fraction,
        epoch_size=epoch_size,
        sampling=sampling,
    )
    log.info(
        "generated data: %d images from %d file(s), %.0f%% of every batch; %d real images",
        len(generated),
        len(generated.paths),
        100 * generated_fraction,
        train.num_real,
    )
    return Datasets(
        train,
        datasets.test,
        datasets.num_classes,
        datasets.mean,
        datasets.std,
        datasets.normalized,
        crop_flip=None,  # the device loader cannot serve the mixed set
        two_view=datasets.two_view,
        train_batch_sampler=factory,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ikl.data.generated convert IN OUT`` | ``check PATH...``."""
    parser = argparse.ArgumentParser(prog="python -m ikl.data.generated", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="rewrite an .npz uncompressed (streaming)")
    convert.add_argument("source")
    convert.add_argument("target")
    check = commands.add_parser("check", help="validate DM-AT .npz files and print their sizes")
    check.add_argument("paths", nargs="+")
    check.add_argument("--num-classes", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            convert_npz(args.source, args.target)
            open_npz_arrays(args.target)
            sys.stdout.write(f"wrote {args.target} (uncompressed; it memory-maps)\n")
        else:
            images = GeneratedImages(args.paths, num_classes=args.num_classes)
            sys.stdout.write(f"{len(images)} images in {len(images.paths)} file(s): ok\n")
    except (DataError, zipfile.BadZipFile, OSError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
