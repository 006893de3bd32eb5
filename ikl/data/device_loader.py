"""A loader that keeps a whole uint8 image split on the device and augments batches there.

For CIFAR-sized data the host-side pipeline (PIL decode, per-image crop/flip, collate, copy)
costs more than a small model's step. Here the split lives on ``device`` as uint8 and each
batch is gathered, randomly cropped (zero padding) and flipped with one vectorised indexing
op, then converted to float and normalised, all on the device.

On the CPU a batch is assembled with one intra-op thread (the setting is restored before the batch
is yielded, so the training step keeps all threads): a batch is a few hundred KB, too little for
OpenMP's fork/join to pay off, and when the cores are oversubscribed (DataLoader workers, other
processes) each parallel region waits for a descheduled thread, which made the multi-threaded
loader ~10x slower on a shared 2-core machine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from .common import Datasets, uint8_images_to_tensor
from .loaders import epoch_seed, per_rank_batch, shuffled_shard

log = logging.getLogger(__name__)


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    """Run the block with one intra-op thread when ``device`` is the CPU; restore the count after."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def crop_flip_batch(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, padding: int
) -> torch.Tensor:
    """Per-sample crop of the zero-padded images at ``(dy, dx)``, mirrored where ``flip``.

    Equal, sample by sample, to torchvision's ``F.crop(F.pad(img, padding), dy, dx, H, W)``
    followed by ``F.hflip`` when ``flip``. ``images`` is ``B x C x H x W`` (any dtype);
    ``dy``, ``dx`` are in ``[0, 2 * padding]``. Returns a ``B x C x H x W`` view whose memory
    is channels-last.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding)).permute(0, 2, 3, 1)
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = dy[:, None] + ar_h
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class DeviceCIFARLoader:
    """Device-resident loader for uint8 image splits (CIFAR, digits).

    Args:
        images: uint8 ``N x H x W x C`` (torchvision CIFAR ``.data``) or ``N x C x H x W``.
        labels: ``N`` integer labels.
        batch_size: GLOBAL batch size, as :func:`ikl.data.build_loaders`; each rank yields
            ``batch_size // world_size``.
        device: where the split is held and batches are produced.
        train: shuffle and augment (random crop with ``crop_padding`` zero padding, horizontal
            flip with probability 1/2 when ``flip``). Otherwise the order is sequential and a
            rank gets indices ``rank, rank + world_size, ...`` (each sample once overall).
        mean / std: normalise as torchvision ``Normalize`` after scaling to [0, 1]; ``None``
            leaves outputs in [0, 1].
        seed: order of epoch ``e`` is ``DistributedSampler(shuffle=True, seed=seed)``'s (padding
            included); augmentation draws from a device generator seeded by (seed, rank, epoch).
        drop_last: drop the last incomplete train batch.
        channels_last: return batches in channels-last memory format.

    Call :meth:`set_epoch` at the start of every epoch. Iterating yields float32 ``x`` and int64
    ``y`` on ``device``; ``len()`` is the number of batches.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray | Sequence[int],
        *,
        batch_size: int,
        device: torch.device | str,
        train: bool,
        crop_padding: int = 4,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.device = torch.device(device)
        self.images = uint8_images_to_tensor(images).to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.batch_size = per_rank_batch(batch_size, world_size)
        self.train, self.crop_padding, self.flip = train, crop_padding, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last, self.channels_last = drop_last and train, channels_last
        self.mean, self.std = self._stat(mean), self._stat(std)
        self.epoch = 0
        self._last_iterated: int | None = None

    @classmethod
    def from_datasets(
        cls,
        datasets: Datasets,
        *,
        train: bool,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> DeviceCIFARLoader:
        """A loader over ``datasets.train`` (``train=True``) or ``datasets.test``.

        Takes the uint8 ``.data``/``.targets`` of a :func:`~ikl.data.cifar_datasets` or
        :func:`~ikl.data.digits_datasets` split, its crop/flip settings and, when the datasets
        normalise, their mean/std.

        Raises:
            ValueError: two-view ("autoaug"/"cutout") datasets, or datasets without uint8
                ``.data`` (e.g. ImageFolder); use :func:`~ikl.data.build_loaders` for those.
        """
        if train and datasets.two_view:
            raise ValueError(
                "DeviceCIFARLoader does not support the two-view autoaug/cutout datasets; "
                "use ikl.data.build_loaders for them"
            )
        split = datasets.train if train else datasets.test
        if not hasattr(split, "data") or not hasattr(split, "targets"):
            raise ValueError(f"{type(split).__name__} has no in-memory uint8 .data/.targets; use build_loaders")
        aug = datasets.crop_flip
        return cls(
            split.data,
            split.targets,
            batch_size=batch_size,
            device=device,
            train=train,
            crop_padding=aug.padding if aug else 0,
            flip=aug.flip if aug else False,
            mean=datasets.mean if datasets.normalized else None,
            std=datasets.std if datasets.normalized else None,
            seed=seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            channels_last=channels_last,
        )

    def _stat(self, values: Sequence[float] | None) -> torch.Tensor | None:
        if values is None:
            return None
        t = torch.as_tensor([float(v) for v in values], dtype=torch.float32, device=self.device)
        return t.view(1, -1, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``'s order and augmentation draws."""
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in visiting order (on the CPU)."""
        n = len(self.images)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        return shuffled_shard(n, seed=self.seed, epoch=self.epoch, rank=self.rank, world_size=self.world_size)

    def num_samples(self) -> int:
        """How many samples this rank visits per epoch (padding included, as DistributedSampler)."""
        n, ws = len(self.images), self.world_size
        return len(range(self.rank, n, ws)) if not self.train else -(-n // ws)

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.train and self._last_iterated == self.epoch:
            log.warning("device loader epoch %d drawn twice: call set_epoch(epoch)", self.epoch)
        self._last_iterated = self.epoch
        order = self.indices().to(self.device)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(epoch_seed(self.seed, self.rank, self.epoch, stream=2))
        for i in range(len(self)):
            with _one_thread_on_cpu(self.device):
                idx = order[i * self.batch_size : (i + 1) * self.batch_size]
                batch = self._batch(self.images[idx], gen), self.labels[idx]
            yield batch

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, span = len(x), 2 * self.crop_padding + 1
        kw = {"generator": gen, "device": self.device}
        dy = torch.randint(0, span, (b,), **kw)
        dx = torch.randint(0, span, (b,), **kw)
        flip = torch.randint(0, 2, (b,), **kw).bool() if self.flip else torch.zeros_like(dy).bool()
        return crop_flip_batch(x, dy, dx, flip, self.crop_padding)

    def _batch(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.train and (self.crop_padding or self.flip):
            x = self._augment(x, gen)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt).float().div_(255)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x
