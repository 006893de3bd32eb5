"""DataLoaders with a global batch size, DDP sharding and reproducible, resumable order.

Callers must call :func:`set_epoch` on the train loader at the start of every epoch (epoch 0
included, or rely on epoch 0 being the default). Without it every epoch repeats the same order,
exactly as with torch's ``DistributedSampler``. Given ``seed`` and the epoch, the sample order
and (with ``workers > 0``) the workers' augmentation RNG streams are fixed, so resuming at
epoch ``e`` replays what an uninterrupted run would have done. With ``workers == 0`` the
transforms draw from the main process's global RNG, which the caller seeds.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, SequentialSampler

from .common import Datasets

log = logging.getLogger(__name__)


def epoch_seed(seed: int, rank: int, epoch: int, stream: int = 0) -> int:
    """A 64-bit seed mixing (seed, rank, epoch, stream) for a loader's worker RNG."""
    entropy = [seed, rank, epoch, stream]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)
    return int(state[0])


def shuffled_shard(
    n: int, *, seed: int, epoch: int, rank: int = 0, world_size: int = 1, drop_last: bool = False
) -> torch.Tensor:
    """The indices ``DistributedSampler(shuffle=True, seed, drop_last)`` gives ``rank`` at ``epoch``.

    ``randperm(n)`` seeded with ``seed + epoch``, padded by wrapping (or cut, with ``drop_last``)
    to a multiple of ``world_size``, then every ``world_size``-th index from ``rank``.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g)
    if drop_last and n % world_size:
        total = (n // world_size) * world_size
        perm = perm[:total]
    else:
        total = math.ceil(n / world_size) * world_size
        perm = perm.repeat(math.ceil(total / max(n, 1)))[:total]
    return perm[rank:total:world_size]


class EpochRandomSampler(Sampler[int]):
    """Single-process shuffling with ``DistributedSampler``'s semantics (world size 1).

    The order of epoch ``e`` is ``randperm`` seeded with ``seed + e``, independent of how many
    epochs were drawn before, so a resumed run replays an uninterrupted one.
    """

    def __init__(self, data_source: Sized | int, *, seed: int = 0) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        self.seed = seed
        self.rank = 0
        self.epoch = 0
        self._last_iterated: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self._last_iterated == self.epoch:
            log.warning("train order for epoch %d drawn twice: call set_epoch(loader, epoch)", self.epoch)
        self._last_iterated = self.epoch
        return iter(shuffled_shard(self.num_samples, seed=self.seed, epoch=self.epoch).tolist())

    def __len__(self) -> int:
        return self.num_samples


class RepeatedAugmentationSampler(Sampler[int]):
    """Repeated augmentation (Hoffer et al. 2020; DeiT, timm's ``RepeatAugSampler``): each image
    ``repeats`` times per epoch, its copies on different ranks, the epoch still ~``len(dataset)``
    images long.

    The order of epoch ``e`` is ``randperm(n)`` seeded with ``seed + e`` (timm: ``e``), each index
    repeated ``repeats`` times in a row, wrapped to a multiple of ``world_size`` and dealt out
    round-robin, so consecutive copies go to consecutive ranks (on one process they share a
    batch). Each rank yields the first ``floor(n // selected_round * selected_round / world_size)``
    of its share (``ceil(n / world_size)`` when ``n < selected_round``), as timm 1.0 does, so
    with ``seed=0`` the indices equal ``timm.data.distributed_sampler.RepeatAugSampler``'s.
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        repeats: int = 3,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        selected_round: int = 256,
    ) -> None:
        if repeats < 1 or int(repeats) != repeats:
            raise ValueError(f"repeats must be a positive whole number, got {repeats}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n = data_source if isinstance(data_source, int) else len(data_source)
        self.repeats, self.seed, self.rank, self.world_size = int(repeats), seed, rank, world_size
        self.epoch = 0
        self.total_size = math.ceil(self.n * self.repeats / world_size) * world_size
        if selected_round and self.n >= selected_round:
            selected = (self.n // selected_round * selected_round) // world_size
        else:
            selected = math.ceil(self.n / world_size)
        self.num_selected = min(selected, self.total_size // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).repeat_interleave(self.repeats).tolist()
        picks = range(self.rank, self.total_size, self.world_size)[: self.num_selected]
        return iter([order[i % len(order)] for i in picks])

    def __len__(self) -> int:
        return self.num_selected


class ShardedEvalSampler(Sampler[int]):
    """Rank ``r`` of ``world_size`` gets indices ``r, r + world_size, ...``: no padding.

    Every sample is evaluated exactly once across ranks (``DistributedSampler`` pads with
    repeats, which biases distributed accuracy). Ranks may get shards differing by one sample,
    so reduce sums and counts, not per-rank means.
    """

    def __init__(self, data_source: Sized | int, *, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.total = data_source if isinstance(data_source, int) else len(data_source)
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.world_size))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    torch seeds each worker's torch RNG with ``base_seed + worker_id``, and ``base_seed`` is
    drawn from the loader's generator, which :func:`set_epoch` reseeds per (seed, rank, epoch).
    """
    del worker_id
    torch_seed = torch.initial_seed()
    np.random.seed(np.random.SeedSequence([torch_seed]).generate_state(1)[0])
    random.seed(torch_seed)


def set_epoch(loader: DataLoader | Any, epoch: int) -> None:
    """Select epoch ``epoch``'s sample order and augmentation seeds; call it every epoch.

    For a train loader from :func:`build_loaders`: calls ``loader.sampler.set_epoch(epoch)``
    (``DistributedSampler`` or :class:`EpochRandomSampler`; the batch sampler's when it has one,
    e.g. :class:`ikl.data.MixedBatchSampler`) and reseeds the loader's generator,
    which seeds the workers, from (seed, rank, epoch). For a loader with its own ``set_epoch``
    (:class:`ikl.data.DeviceCIFARLoader`) it calls that.
    """
    if not isinstance(loader, DataLoader):
        loader.set_epoch(epoch)
        return
    batch_sampler = loader.batch_sampler
    sampler = batch_sampler if hasattr(batch_sampler, "set_epoch") else loader.sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError(f"{type(sampler).__name__} has no set_epoch; pass the train loader")
    sampler.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(epoch_seed(sampler.seed, sampler.rank, epoch))


def per_rank_batch(global_batch: int, world_size: int, what: str = "batch_size") -> int:
    """``global_batch // world_size``; ValueError unless it divides evenly."""
    if global_batch <= 0 or global_batch % world_size:
        raise ValueError(
            f"{what}={global_batch} is the global batch and must be a positive multiple of world_size={world_size}"
        )
    return global_batch // world_size


def build_loaders(
    datasets: Datasets,
    *,
    batch_size: int,
    test_batch_size: int | None = None,
    workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    aug_repeats: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """(train, test) loaders. ``batch_size`` and ``test_batch_size`` are GLOBAL batch sizes.

    Under ``world_size > 1`` each rank loads ``batch_size // world_size`` per step, the train
    set through ``DistributedSampler(shuffle=True, seed=seed)`` and the test set through
    :class:`ShardedEvalSampler` (each test sample exactly once overall). Single process: the
    train set through :class:`EpochRandomSampler`; with ``aug_repeats > 1`` through
    :class:`RepeatedAugmentationSampler` (any world size). When ``datasets.train_batch_sampler`` is set
    (real + generated data), the train batches come from the batch sampler it builds for this rank
    instead (its own epoch length and composition; ``drop_last`` and ``aug_repeats`` do not apply).
    Call :func:`set_epoch` on the train loader every epoch. ``drop_last`` applies to the train loader only.
    """
    train_bs = per_rank_batch(batch_size, world_size)
    test_bs = per_rank_batch(test_batch_size or batch_size, world_size, "test_batch_size")
    common = {"num_workers": workers, "pin_memory": pin_memory, "worker_init_fn": seed_worker}
    test = _test_loader(datasets, test_bs, seed, rank, world_size, common)
    generator = torch.Generator().manual_seed(epoch_seed(seed, rank, 0))
    if datasets.train_batch_sampler is not None:
        batches = datasets.train_batch_sampler(batch_size=batch_size, seed=seed, rank=rank, world_size=world_size)
        return DataLoader(datasets.train, batch_sampler=batches, generator=generator, **common), test
    if aug_repeats > 1:
        train_sampler: Sampler[int] = RepeatedAugmentationSampler(
            datasets.train, repeats=aug_repeats, seed=seed, rank=rank, world_size=world_size
        )
    elif world_size > 1:
        train_sampler = DistributedSampler(datasets.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        train_sampler = EpochRandomSampler(datasets.train, seed=seed)
    train = DataLoader(
        datasets.train, batch_size=train_bs, sampler=train_sampler, drop_last=drop_last, generator=generator, **common
    )
    return train, test


def _test_loader(
    datasets: Datasets, test_bs: int, seed: int, rank: int, world_size: int, common: dict[str, Any]
) -> DataLoader:
    if world_size > 1:
        test_sampler: Sampler[int] = ShardedEvalSampler(datasets.test, rank=rank, world_size=world_size)
    else:
        test_sampler = SequentialSampler(datasets.test)
    return DataLoader(
        datasets.test,
        batch_size=test_bs,
        sampler=test_sampler,
        generator=torch.Generator().manual_seed(epoch_seed(seed, rank, 0, stream=1)),
        **common,
    )
