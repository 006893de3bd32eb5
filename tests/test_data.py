"""Tests for ikl.data: datasets, transforms, loaders (CPU, no network)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
import torchvision.datasets.utils as tv_utils
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import functional as TF

from ikl.data import (
    Cutout,
    DataError,
    Datasets,
    ShardedEvalSampler,
    build_loaders,
    cifar_datasets,
    digits_datasets,
    imagenet_datasets,
    set_epoch,
    stratified_split,
    subset_indices,
)
from ikl.data.digits import load_digits_uint8
from tests.datautils import write_fake_cifar10, write_fake_cifar100, write_fake_image_folder

# sha256 of the int64 test indices of the digits split (test_fraction 0.2, split_seed 0).
# np.random.RandomState's stream is frozen by numpy, so this must hold on every machine.
DIGITS_SPLIT_SHA = "3530be80b9605f4c"


# ---------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> Datasets:
    return digits_datasets()


def test_digits_split_is_fixed_and_stratified(digits: Datasets) -> None:
    labels = np.asarray(digits.train.targets + digits.test.targets)
    train_idx, test_idx = stratified_split(load_digits_uint8(8)[1], 0.2, 0)
    assert hashlib.sha256(test_idx.astype(np.int64).tobytes()).hexdigest()[:16] == DIGITS_SPLIT_SHA
    assert len(set(train_idx) & set(test_idx)) == 0
    assert len(train_idx) + len(test_idx) == 1797 == len(labels)
    totals = Counter(labels.tolist())
    tests = Counter(digits.test.targets)
    assert all(tests[c] == round(0.2 * totals[c]) for c in range(10))
    again = digits_datasets()
    assert np.array_equal(again.test.data, digits.test.data)
    other = stratified_split(np.asarray(labels), 0.2, 1)[1]
    assert not np.array_equal(other, test_idx)


def test_digits_shapes_dtypes_range(digits: Datasets) -> None:
    assert digits.num_classes == 10 and not digits.normalized
    assert digits.train.data.dtype == np.uint8 and digits.train.data.shape[1:] == (32, 32, 3)
    assert np.array_equal(digits.train.data[..., 0], digits.train.data[..., 2])
    x, y = digits.test[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert torch.equal(x, TF.to_tensor(digits.test.data[0]))
    small = digits_datasets(image_size=8, augment="none")
    assert small.train[0][0].shape == (3, 8, 8)
    assert small.crop_flip is None and digits.crop_flip.padding == 2 and not digits.crop_flip.flip


def test_digits_crop_is_a_shift_never_a_flip(digits: Datasets) -> None:
    raw = TF.to_tensor(digits.train.data[5])
    padded = TF.pad(raw, 2)
    shifts = [padded[:, i : i + 32, j : j + 32] for i in range(5) for j in range(5)]
    torch.manual_seed(0)
    for _ in range(20):
        out = digits.train[5][0]
        assert any(torch.equal(out, s) for s in shifts)


def test_digits_normalize_and_subsets() -> None:
    ds = digits_datasets(normalize=True, max_train_samples=50, max_test_samples=20)
    assert len(ds.train) == 50 and len(ds.test) == 20
    assert max(Counter(ds.train.targets).values()) - min(Counter(ds.train.targets).values()) <= 1
    mean = torch.tensor(ds.mean).view(3, 1, 1)
    std = torch.tensor(ds.std).view(3, 1, 1)
    expected = (TF.to_tensor(ds.test.data[0]) - mean) / std
    assert torch.allclose(ds.test[0][0], expected, atol=1e-6)
    again = digits_datasets(max_train_samples=50)
    assert np.array_equal(again.train.data, ds.train.data)


def test_subset_indices_balanced_and_deterministic() -> None:
    targets = [i % 7 for i in range(700)]
    idx = subset_indices(targets, 70)
    assert np.array_equal(idx, subset_indices(targets, 70))
    assert Counter(targets[i] for i in idx) == Counter({c: 10 for c in range(7)})
    assert np.array_equal(subset_indices(targets, 10_000), np.arange(700))


# ---------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar10(root)
    write_fake_cifar100(root)
    return root


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Any download attempt raises (and is recorded) instead of touching the network."""
    calls: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", refuse)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    return calls


@pytest.mark.parametrize(
    ("name", "cls", "n_train", "n_test", "classes"),
    [
        ("cifar10", torchvision.datasets.CIFAR10, 100, 30, 10),
        ("cifar100", torchvision.datasets.CIFAR100, 200, 100, 100),
    ],
)
def test_cifar_basic_through_torchvision(cifar_root, no_download, name, cls, n_train, n_test, classes) -> None:
    ds = cifar_datasets(name=name, root=str(cifar_root), normalize=False)
    assert no_download == []  # files present: no download attempted, even with download=True
    assert isinstance(ds.train, cls) and isinstance(ds.test, cls)
    assert (len(ds.train), len(ds.test), ds.num_classes) == (n_train, n_test, classes)
    assert ds.train.data.dtype == np.uint8 and ds.train.data.shape[1:] == (32, 32, 3)
    x, y = ds.test[3]
    assert torch.equal(x, torch.from_numpy(ds.test.data[3]).permute(2, 0, 1).float() / 255)
    assert 0 <= y < classes
    xt, _ = ds.train[0]
    assert xt.shape == (3, 32, 32) and xt.min() >= 0.0 and xt.max() <= 1.0
    assert ds.crop_flip.padding == 4 and ds.crop_flip.flip and not ds.two_view


def test_cifar_pixel_layout_matches_file(cifar_root) -> None:
    import pickle

    with open(cifar_root / "cifar-100-python" / "test", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert set(entry) >= {b"data", b"fine_labels", b"coarse_labels", b"filenames"}
    ds = cifar_datasets(name="cifar100", root=str(cifar_root), download=False)
    row = entry[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(ds.test.data[0], row)
    assert ds.test.targets[0] == entry[b"fine_labels"][0]


def test_cifar_normalize(cifar_root) -> None:
    ds = cifar_datasets(name="cifar10", root=str(cifar_root), download=False, augment="none")
    assert ds.normalized and ds.mean == (0.4914, 0.4822, 0.4465)
    expected = TF.normalize(TF.to_tensor(ds.train.data[1]), ds.mean, ds.std)
    assert torch.allclose(ds.train[1][0], expected, atol=1e-6)
    assert ds.crop_flip is None


@pytest.mark.parametrize("augment", ["autoaug", "cutout"])
def test_cifar_two_view(cifar_root, augment: str) -> None:
    ds = cifar_datasets(name="cifar100", root=str(cifar_root), augment=augment, download=False)
    x, y = ds.train[0]
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert ds.two_view and ds.crop_flip is None
    assert ds.test[0][0].shape == (3, 32, 32)
    batch = next(iter(build_loaders(ds, batch_size=4)[0]))
    assert batch[0].shape == (4, 2, 3, 32, 32)


def test_cutout_hole_geometry() -> None:
    torch.manual_seed(0)
    cut = Cutout(1, 16)
    sizes = set()
    for _ in range(200):
        zero = cut(torch.ones(3, 32, 32))[0] == 0
        rows, cols = zero.any(1).sum().item(), zero.any(0).sum().item()
        assert zero.sum().item() == rows * cols  # one axis-aligned rectangle
        assert 8 <= rows <= 16 and 8 <= cols <= 16
        sizes.add((rows, cols))
    assert (16, 16) in sizes and len(sizes) > 3


def test_cifar_subsets(cifar_root) -> None:
    ds = cifar_datasets(
        name="cifar10",
        root=str(cifar_root),
        download=False,
        max_train_samples=30,
        max_test_samples=10,
    )
    assert len(ds.train) == 30 and len(ds.train.targets) == 30 and len(ds.test) == 10
    assert sorted(Counter(ds.train.targets).values()) == [3] * 10


@pytest.mark.parametrize(("name", "folder"), [("cifar100", "cifar-100-python"), ("cifar10", "cifar-10-batches-py")])
def test_missing_cifar_download_fails(tmp_path, no_download, name: str, folder: str) -> None:
    with pytest.raises(DataError) as err:
        cifar_datasets(name=name, root=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / folder) in msg and "download failed" in msg and "dataset.builder.root=" in msg
    assert "name resolution" in msg and len(no_download) == 1


def test_concurrent_cifar_downloads_fetch_once(tmp_path, monkeypatch) -> None:
    """Two loaders that find no files at once (DDP ranks of one node, two runs): one downloads
    under the root's lock, the other waits for it and reads the files; nobody reads a half-written
    folder or extracts over the other's files."""
    calls: list[str] = []
    started = threading.Event()

    def slow_download(url: str, root: str, **kwargs: object) -> None:
        calls.append(url)
        started.set()
        time.sleep(0.5)  # a second caller that does not wait would find no files and fetch again
        write_fake_cifar100(Path(root), train=10, test=10)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", slow_download)
    results: list[object] = []

    def load() -> None:
        try:
            results.append(len(cifar_datasets(name="cifar100", root=str(tmp_path)).train))
        except Exception as err:  # (reported below)
            results.append(err)

    first = threading.Thread(target=load)
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=load)
    second.start()
    first.join(20)
    second.join(20)
    assert results == [10, 10] and len(calls) == 1


def test_missing_cifar_without_download(tmp_path, no_download) -> None:
    with pytest.raises(DataError, match="download=False"):
        cifar_datasets(name="cifar100", root=str(tmp_path), download=False)
    assert no_download == []


def test_corrupt_cifar_is_data_error(tmp_path) -> None:
    write_fake_cifar100(tmp_path, train=10, test=10)
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="unreadable"):
        cifar_datasets(name="cifar100", root=str(tmp_path), download=False)


# ---------------------------------------------------------------------------- ImageFolder


def test_image_folder_train_val(tmp_path) -> None:
    write_fake_image_folder(tmp_path / "train", classes=3, per_class=4)
    write_fake_image_folder(tmp_path / "val", classes=3, per_class=2, size=(64, 50))
    ds = imagenet_datasets(
        train_root=str(tmp_path / "train"),
        val_root=str(tmp_path / "val"),
        image_size=32,
        max_train_samples=6,
    )
    assert ds.num_classes == 3 and len(ds.train) == 6 and len(ds.test) == 6
    assert sorted(Counter(ds.train.targets).values()) == [2, 2, 2]
    assert all(ds.train.samples[i][1] == ds.train.targets[i] for i in range(6))
    x, y = ds.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 3
    assert ds.test[0][0].shape == (3, 32, 32) and ds.normalized


def test_image_folder_missing_or_empty(tmp_path) -> None:
    write_fake_image_folder(tmp_path / "train", classes=2, per_class=1)
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        imagenet_datasets(train_root=str(tmp_path / "train"), val_root=str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no usable class folders"):
        imagenet_datasets(train_root=str(tmp_path / "empty"), val_root=str(tmp_path / "train"))


# ---------------------------------------------------------------------------- loaders


def indexed(n_train: int = 50, n_test: int = 21) -> Datasets:
    """Datasets whose labels are the sample indices."""
    train = TensorDataset(torch.zeros(n_train, 1), torch.arange(n_train))
    test = TensorDataset(torch.zeros(n_test, 1), torch.arange(n_test))
    return Datasets(train, test, n_train, (0.0,), (1.0,), False)


def epoch_order(loader, epoch: int) -> list[int]:
    set_epoch(loader, epoch)
    return torch.cat([y for _, y in loader]).tolist()


def test_global_batch_split() -> None:
    ds = indexed()
    train, test = build_loaders(ds, batch_size=8, test_batch_size=6, rank=1, world_size=2)
    assert train.batch_size == 4 and test.batch_size == 3
    single, _ = build_loaders(ds, batch_size=8)
    assert single.batch_size == 8
    with pytest.raises(ValueError, match="multiple of world_size"):
        build_loaders(ds, batch_size=9, world_size=2)


def test_order_reproducible_and_resumable() -> None:
    ds = indexed()
    run = build_loaders(ds, batch_size=8, seed=3)[0]
    uninterrupted = [epoch_order(run, e) for e in range(3)]
    assert sorted(uninterrupted[0]) == list(range(50))
    assert uninterrupted[0] != uninterrupted[1]
    resumed = build_loaders(ds, batch_size=8, seed=3)[0]
    assert epoch_order(resumed, 2) == uninterrupted[2]
    other = build_loaders(ds, batch_size=8, seed=4)[0]
    assert epoch_order(other, 0) != uninterrupted[0]


def test_forgotten_set_epoch_warns(caplog: pytest.LogCaptureFixture) -> None:
    train = build_loaders(indexed(), batch_size=8)[0]
    first, second = (torch.cat([y for _, y in train]).tolist() for _ in range(2))
    assert first == second and "call set_epoch" in caplog.text


class RandomItems(Dataset):
    """Each item is a fresh draw from torch's RNG (stands in for random augmentation)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(1), i


def test_worker_augmentation_resumable() -> None:
    ds = Datasets(RandomItems(), RandomItems(), 16, (0.0,), (1.0,), False)

    def draws(loader, epoch: int) -> torch.Tensor:
        set_epoch(loader, epoch)
        return torch.cat([x for x, _ in loader])

    run = build_loaders(ds, batch_size=4, workers=2, seed=1)[0]
    first = [draws(run, e) for e in range(2)]
    resumed = build_loaders(ds, batch_size=4, workers=2, seed=1)[0]
    assert torch.equal(draws(resumed, 1), first[1])
    assert not torch.equal(first[0], first[1])


def test_distributed_train_shards_cover_dataset() -> None:
    ds = indexed(n_train=51)
    ranks = [build_loaders(ds, batch_size=4, rank=r, world_size=2, seed=0)[0] for r in range(2)]
    orders = [epoch_order(loader, 1) for loader in ranks]
    assert len(orders[0]) == len(orders[1]) == 26
    assert set(orders[0]) | set(orders[1]) == set(range(51))
    assert orders[0] != epoch_order(ranks[0], 2)


@pytest.mark.parametrize(("n", "world_size"), [(21, 2), (20, 2), (10, 3), (2, 4)])
def test_sharded_eval_sampler_exactly_once(n: int, world_size: int) -> None:
    seen = [i for r in range(world_size) for i in ShardedEvalSampler(n, rank=r, world_size=world_size)]
    assert sorted(seen) == list(range(n))
    assert sum(len(ShardedEvalSampler(n, rank=r, world_size=world_size)) for r in range(world_size)) == n


def test_test_loaders_evaluate_each_sample_once() -> None:
    ds = indexed(n_test=21)
    seen = []
    for r in range(2):
        test = build_loaders(ds, batch_size=4, rank=r, world_size=2)[1]
        seen += torch.cat([y for _, y in test]).tolist()
    assert sorted(seen) == list(range(21))
