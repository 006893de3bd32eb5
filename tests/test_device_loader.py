"""Tests for ikl.data.DeviceCIFARLoader: augmentation law, epoch coverage, sharding (CPU)."""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ikl.data import (
    Datasets,
    DeviceCIFARLoader,
    cifar_datasets,
    crop_flip_batch,
    digits_datasets,
    imagenet_datasets,
    set_epoch,
)
from tests.datautils import write_fake_cifar100, write_fake_image_folder

PAD = 4


def coord_images(n: int, size: int = 32) -> torch.Tensor:
    """uint8 ``n x size x size x 3`` images: channel 0 = row + 1, channel 1 = col + 1, 2 = 7."""
    ar = torch.arange(1, size + 1, dtype=torch.uint8)
    img = torch.stack(
        [
            ar[:, None].expand(size, size),
            ar[None, :].expand(size, size),
            torch.full((size, size), 7, dtype=torch.uint8),
        ],
        dim=-1,
    )
    return img.expand(n, -1, -1, -1).contiguous()


def decode(x: torch.Tensor, pad: int = PAD) -> list[tuple[int, int, bool]]:
    """(dy, dx, flip) of each crop of :func:`coord_images` (float in [0, 1], ``B x 3 x H x W``)."""
    v = (x * 255).round().long()
    row, col, nxt = v[:, 0, 16, 16], v[:, 1, 16, 16], v[:, 1, 16, 17]
    flip = nxt < col
    dy = row - 17 + pad
    dx = torch.where(flip, col - 16 + pad, col - 17 + pad)
    return list(zip(dy.tolist(), dx.tolist(), flip.tolist(), strict=True))


def chi_square(counts: Counter, cells: list) -> float:
    total = sum(counts.values())
    expected = total / len(cells)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in cells)


ALL_CELLS = [(i, j, f) for i in range(2 * PAD + 1) for j in range(2 * PAD + 1) for f in (False, True)]


def test_crop_flip_equals_torchvision_for_every_offset() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
    dy, dx, flip = (torch.tensor(v) for v in zip(*ALL_CELLS, strict=True))
    out = crop_flip_batch(img.expand(len(ALL_CELLS), -1, -1, -1), dy, dx, flip, PAD)
    padded = TF.pad(img, PAD)
    for k, (i, j, f) in enumerate(ALL_CELLS):
        ref = TF.crop(padded, i, j, 32, 32)
        assert torch.equal(out[k], TF.hflip(ref) if f else ref), (i, j, f)


def test_crop_flip_batch_of_distinct_images() -> None:
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    dy, dx = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.randint(0, 2, (16,), generator=g).bool()
    out = crop_flip_batch(imgs, dy, dx, flip, PAD)
    for k in range(16):
        ref = TF.crop(TF.pad(imgs[k], PAD), int(dy[k]), int(dx[k]), 32, 32)
        assert torch.equal(out[k], TF.hflip(ref) if flip[k] else ref)


def test_decoder_reads_torchvision_draws() -> None:
    """The decoder is right: torchvision's own RandomCrop + flip decodes to uniform cells."""
    torch.manual_seed(0)
    tv = T.Compose([T.RandomCrop(32, padding=PAD), T.RandomHorizontalFlip()])
    img = coord_images(1)[0].permute(2, 0, 1)
    draws = torch.stack([tv(img) for _ in range(1620)]).float() / 255
    counts = Counter(decode(draws))
    assert set(counts) == set(ALL_CELLS)
    assert chi_square(counts, ALL_CELLS) < 161 + 6 * math.sqrt(2 * 161)


def test_device_augmentation_is_uniform_over_offsets_and_flips() -> None:
    loader = DeviceCIFARLoader(coord_images(4096), torch.zeros(4096), batch_size=1024, device="cpu", train=True, seed=5)
    counts: Counter = Counter()
    for epoch in range(4):
        loader.set_epoch(epoch)
        for x, _ in loader:
            counts.update(decode(x))
    assert set(counts) == set(ALL_CELLS)  # every offset x flip reached, nothing else
    # chi-square with 161 dof: mean 161, sd ~18; flip-never or padding-2 gives > 10^4
    assert chi_square(counts, ALL_CELLS) < 161 + 6 * math.sqrt(2 * 161)
    flips = sum(v for (_, _, f), v in counts.items() if f)
    assert abs(flips / sum(counts.values()) - 0.5) < 0.02


def test_no_flip_and_other_padding() -> None:
    loader = DeviceCIFARLoader(
        coord_images(512),
        torch.zeros(512),
        batch_size=512,
        device="cpu",
        train=True,
        crop_padding=2,
        flip=False,
    )
    counts = Counter(decode(next(iter(loader))[0], pad=2))
    assert set(counts) == {(i, j, False) for i in range(5) for j in range(5)}


def test_normalisation_equals_torchvision() -> None:
    g = torch.Generator().manual_seed(2)
    imgs = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8, generator=g)
    mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    loader = DeviceCIFARLoader(imgs, torch.arange(10), batch_size=10, device="cpu", train=False, mean=mean, std=std)
    x, y = next(iter(loader))
    ref = torch.stack([T.Normalize(mean, std)(TF.to_tensor(im.numpy())) for im in imgs])
    assert x.dtype == torch.float32 and torch.allclose(x, ref, atol=1e-6)
    assert torch.equal(y, torch.arange(10))
    plain = next(iter(DeviceCIFARLoader(imgs, torch.arange(10), batch_size=10, device="cpu", train=False)))[0]
    assert torch.equal(plain, torch.stack([TF.to_tensor(im.numpy()) for im in imgs]))


def test_layouts_and_channels_last() -> None:
    g = torch.Generator().manual_seed(3)
    nhwc = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8, generator=g)
    a = DeviceCIFARLoader(nhwc, torch.arange(6), batch_size=6, device="cpu", train=True, seed=1)
    b = DeviceCIFARLoader(
        nhwc.permute(0, 3, 1, 2),
        torch.arange(6),
        batch_size=6,
        device="cpu",
        train=True,
        seed=1,
        channels_last=True,
    )
    (xa, ya), (xb, yb) = next(iter(a)), next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xb.is_contiguous(memory_format=torch.channels_last) and xa.is_contiguous()


def labels_of(loader: DeviceCIFARLoader, epoch: int) -> list[int]:
    set_epoch(loader, epoch)  # the generic helper dispatches to DeviceCIFARLoader.set_epoch
    return torch.cat([y for _, y in loader]).tolist()


def test_epoch_visits_every_sample_once() -> None:
    n = 103
    loader = DeviceCIFARLoader(coord_images(n), torch.arange(n), batch_size=16, device="cpu", train=True)
    assert len(loader) == 7
    orders = [labels_of(loader, e) for e in range(3)]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert orders[0] != orders[1]
    fresh = DeviceCIFARLoader(coord_images(n), torch.arange(n), batch_size=16, device="cpu", train=True)
    assert labels_of(fresh, 2) == orders[2]
    dropped = DeviceCIFARLoader(
        coord_images(n), torch.arange(n), batch_size=16, device="cpu", train=True, drop_last=True
    )
    assert len(dropped) == 6 and len(labels_of(dropped, 0)) == 96


def test_order_matches_distributed_sampler() -> None:
    n, seed = 37, 11
    for world_size in (1, 2, 3):
        for rank in range(world_size):
            loader = DeviceCIFARLoader(
                coord_images(n),
                torch.arange(n),
                batch_size=12,
                device="cpu",
                train=True,
                seed=seed,
                rank=rank,
                world_size=world_size,
            )
            ref = DistributedSampler(range(n), num_replicas=world_size, rank=rank, seed=seed)
            ref.set_epoch(4)
            assert labels_of(loader, 4) == list(ref)


def test_two_ranks_in_one_process_cover_every_sample() -> None:
    n = 51
    ranks = [
        DeviceCIFARLoader(
            coord_images(n),
            torch.arange(n),
            batch_size=8,
            device="cpu",
            train=True,
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    seen = [labels_of(loader, 3) for loader in ranks]
    assert len(seen[0]) == len(seen[1]) == 26  # one padding sample, as DistributedSampler
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    assert len(set(seen[0]) & set(seen[1])) == 1
    evals = [
        DeviceCIFARLoader(
            coord_images(n),
            torch.arange(n),
            batch_size=8,
            device="cpu",
            train=False,
            rank=r,
            world_size=2,
        )
        for r in range(2)
    ]
    assert sorted(labels_of(evals[0], 0) + labels_of(evals[1], 0)) == list(range(n))


def _gloo_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)  # as DataLoader workers: the forked child must not reuse the OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        n = 45
        loader = DeviceCIFARLoader(
            coord_images(n),
            torch.arange(n),
            batch_size=6,
            device="cpu",
            train=True,
            rank=rank,
            world_size=world_size,
            seed=7,
        )
        mine = torch.tensor(labels_of(loader, 1))
        gathered = [torch.empty_like(mine) for _ in range(world_size)]
        dist.all_gather(gathered, mine)
        if rank == 0:
            torch.save(torch.stack(gathered), out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method")
def test_two_process_gloo_covers_every_sample(tmp_path) -> None:
    out = tmp_path / "labels.pt"
    args = (2, str(tmp_path / "init"), str(out))
    workers = mp.start_processes(_gloo_worker, args=args, nprocs=2, join=False, start_method="fork")
    deadline = time.monotonic() + 60
    while not workers.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in workers.processes:
                proc.kill()
            pytest.fail("the two gloo workers did not finish within 60 s")
    gathered = torch.load(out, weights_only=True)
    assert gathered.shape == (2, 23)
    assert set(gathered.flatten().tolist()) == set(range(45))
    assert Counter(gathered.flatten().tolist()).most_common(1)[0][1] == 2  # one padded repeat


# ---------------------------------------------------------------------------- from_datasets


def test_from_digits_datasets() -> None:
    ds = digits_datasets(normalize=True, max_train_samples=40, max_test_samples=20)
    train = DeviceCIFARLoader.from_datasets(ds, train=True, batch_size=8, device="cpu")
    assert (train.crop_padding, train.flip) == (2, False)
    x, y = next(iter(train))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    test = DeviceCIFARLoader.from_datasets(ds, train=False, batch_size=32, device="cpu")
    xs = torch.cat([x for x, _ in test])
    ref = torch.stack([ds.test[i][0] for i in range(len(ds.test))])
    assert torch.allclose(xs, ref, atol=1e-6)


def test_from_cifar_datasets(tmp_path) -> None:
    write_fake_cifar100(tmp_path, train=100, test=20)
    ds = cifar_datasets(name="cifar100", root=str(tmp_path), download=False, normalize=False)
    loader = DeviceCIFARLoader.from_datasets(ds, train=True, batch_size=10, device="cpu")
    assert (loader.crop_padding, loader.flip, loader.mean) == (4, True, None)
    assert torch.equal(loader.images, torch.from_numpy(ds.train.data).permute(0, 3, 1, 2))
    assert len(loader) == 10
    two_view = cifar_datasets(name="cifar100", root=str(tmp_path), download=False, augment="autoaug")
    with pytest.raises(ValueError, match="two-view"):
        DeviceCIFARLoader.from_datasets(two_view, train=True, batch_size=10, device="cpu")
    assert len(DeviceCIFARLoader.from_datasets(two_view, train=False, batch_size=10, device="cpu")) == 2


def test_from_image_folder_is_refused(tmp_path) -> None:
    write_fake_image_folder(tmp_path / "t", classes=2, per_class=1)
    ds: Datasets = imagenet_datasets(train_root=str(tmp_path / "t"), val_root=str(tmp_path / "t"))
    with pytest.raises(ValueError, match="build_loaders"):
        DeviceCIFARLoader.from_datasets(ds, train=True, batch_size=2, device="cpu")


def test_bad_arguments() -> None:
    imgs = coord_images(4)
    with pytest.raises(ValueError, match="multiple of world_size"):
        DeviceCIFARLoader(imgs, torch.arange(4), batch_size=3, device="cpu", train=True, world_size=2)
    with pytest.raises(ValueError, match="labels"):
        DeviceCIFARLoader(imgs, torch.arange(3), batch_size=2, device="cpu", train=True)
    with pytest.raises(ValueError, match="uint8"):
        DeviceCIFARLoader(imgs.float(), torch.arange(4), batch_size=2, device="cpu", train=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_augmentation_law() -> None:
    loader = DeviceCIFARLoader(
        coord_images(4096),
        torch.zeros(4096),
        batch_size=4096,
        device="cuda",
        train=True,
        mean=(0.5,) * 3,
        std=(1.0,) * 3,
    )
    x, y = next(iter(loader))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32
    counts = Counter(decode(x.cpu() + 0.5))
    assert set(counts) == set(ALL_CELLS)
    assert chi_square(counts, ALL_CELLS) < 161 + 8 * math.sqrt(2 * 161)
