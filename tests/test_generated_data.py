"""Generated-data source (DM-AT ``.npz``, memory-mapped) and its mixing into real training batches:
known-answer composition, DM-AT's short-chunk semantics, exact replay per epoch, DDP sharding, the
loader path, one-line refusals, and a mid-epoch SIGTERM resume through ``train_at.py``."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ikl.data import DataError, GeneratedImages, MixedBatchSampler, build_loaders, generated_datasets, set_epoch
from ikl.data.digits import digits_datasets
from ikl.data.generated import convert_npz, main, open_npz_arrays
from ikl.engine.trainer import _batch_sample_indices
from tests.datautils import write_generated_npz
from tests.runutils import compose_config

_digits = digits_datasets


# ------------------------------------------------------------------ the file format
def test_members_are_memory_mapped_in_place(tmp_path):
    path = tmp_path / "gen.npz"
    images, labels = write_generated_npz(path, 50, 10, seed=1)
    specs = open_npz_arrays(path)
    mapped = specs["image"].open()
    assert isinstance(mapped, np.memmap) and mapped.shape == (50, 32, 32, 3) and mapped.dtype == np.uint8
    np.testing.assert_array_equal(mapped, images)
    np.testing.assert_array_equal(specs["label"].open(), labels)
    # the offset is where the bytes really are: read them without numpy's npz reader
    raw = path.read_bytes()[specs["image"].offset : specs["image"].offset + images.nbytes]
    assert raw == images.tobytes()


def test_dataset_holds_no_image_data_and_pickles_small(tmp_path):
    write_generated_npz(tmp_path / "gen.npz", 2000, 10)  # 6 MB of pixels
    images = GeneratedImages(tmp_path / "gen.npz", num_classes=10)
    images[0]
    assert len(pickle.dumps(images)) < 4000, "a worker must re-map the file, not receive a copy"
    clone = pickle.loads(pickle.dumps(images))
    np.testing.assert_array_equal(np.asarray(clone[7][0]), np.asarray(images[7][0]))


def test_parts_concatenate_like_dm_ats_merge(tmp_path):
    a_img, a_lab = write_generated_npz(tmp_path / "p1.npz", 30, 10, seed=1)
    b_img, b_lab = write_generated_npz(tmp_path / "p2.npz", 20, 10, seed=2)
    images = GeneratedImages([tmp_path / "p1.npz", tmp_path / "p2.npz"], num_classes=10)
    assert len(images) == 50
    merged_img, merged_lab = np.concatenate([a_img, b_img]), np.concatenate([a_lab, b_lab])
    for i in (0, 29, 30, 49):
        pil, label = images[i]
        np.testing.assert_array_equal(np.asarray(pil), merged_img[i])
        assert label == merged_lab[i]
    np.testing.assert_array_equal(images.label_array(), merged_lab)


def test_compressed_npz_is_refused_in_one_line_and_convert_fixes_it(tmp_path, capsys):
    src = tmp_path / "c.npz"
    images, labels = write_generated_npz(src, 40, 10, compressed=True)
    with pytest.raises(DataError) as info:
        GeneratedImages(src, num_classes=10)
    message = str(info.value)
    assert "\n" not in message and "compressed" in message and "python -m ikl.data.generated convert" in message
    assert main(["convert", str(src), str(tmp_path / "u.npz")]) == 0
    assert "uncompressed" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "u.npz") as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
    loaded = np.load(tmp_path / "u.npz")  # still an ordinary .npz
    np.testing.assert_array_equal(loaded["image"], images)
    converted = GeneratedImages(tmp_path / "u.npz", num_classes=10)
    np.testing.assert_array_equal(converted.label_array(), labels)


def test_convert_streams_in_small_chunks(tmp_path):
    src = tmp_path / "c.npz"
    images, _ = write_generated_npz(src, 64, 10, compressed=True)
    convert_npz(src, tmp_path / "u.npz", chunk_bytes=1000)
    np.testing.assert_array_equal(open_npz_arrays(tmp_path / "u.npz")["image"].open(), images)


def test_check_command_validates_files_in_one_line(tmp_path, capsys):
    write_generated_npz(tmp_path / "p1.npz", 30, 10)
    write_generated_npz(tmp_path / "p2.npz", 20, 10)
    assert main(["check", str(tmp_path / "p1.npz"), str(tmp_path / "p2.npz"), "--num-classes", "10"]) == 0
    assert capsys.readouterr().out == "50 images in 2 file(s): ok\n"
    write_generated_npz(tmp_path / "c.npz", 4, 10, compressed=True)
    assert main(["check", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "convert" in err


@pytest.mark.parametrize(
    ("write", "needle"),
    [
        (lambda p: np.savez(p, image=np.zeros((4, 32, 32, 3), np.uint8)), "no 'label' array"),
        (lambda p: np.savez(p, image=np.zeros((4, 32, 32, 3), np.float32), label=np.zeros(4, int)), "uint8"),
        (lambda p: np.savez(p, image=np.zeros((4, 3, 32, 32), np.uint8), label=np.zeros(4, int)), "channels last"),
        (lambda p: np.savez(p, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(5, int)), "4 images but 5"),
        (lambda p: np.savez(p, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.array([0, 1, 2, 10])), "[0, 10]"),
        (lambda p: np.savez(p, image=np.zeros((4, 32, 32, 3), np.uint8), label=np.zeros(4, float)), "integer"),
        (lambda p: np.savez(p, image=np.zeros((4, 16, 16, 3), np.uint8), label=np.zeros(4, int)), "16x16"),
        (lambda p: Path(p).write_bytes(b"not a zip"), "not an .npz"),
    ],
)
def test_bad_files_are_one_line_data_errors(tmp_path, write, needle):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(DataError) as info:
        GeneratedImages(path, num_classes=10, image_size=(32, 32))
    assert "\n" not in str(info.value) and needle in str(info.value), str(info.value)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="not found.*docs/reproduce.md"):
        GeneratedImages(tmp_path / "absent.npz", num_classes=10)


# ------------------------------------------------------------------ the mixing ratio
def test_dm_at_composition_at_batch_512():
    """DM-AT's default --unsup-fraction 0.7 at batch 512: 154 real + 358 generated, 98 batches of 50000."""
    sampler = MixedBatchSampler(50_000, 1_000_000, batch_size=512, generated_fraction=0.7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 98
    for batch in batches:
        real = [i for i in batch if i < 50_000]
        assert len(batch) == 512 and len(real) == 154
        assert all(50_000 <= i < 1_050_000 for i in batch if i >= 50_000)
    real = [i for b in batches for i in b if i < 50_000]
    assert len(set(real)) == len(real) == 98 * 154, "one shuffled pass: no real image twice in an epoch"


def test_short_last_chunk_of_a_real_pass_gets_more_generated_images():
    """10 real images, 4 per batch, 5 batches: a pass gives chunks 4, 4, 2 (DM-AT chunks each pass on
    its own), then a new pass 4, 4; the short batch is filled up with 6 generated images."""
    sampler = MixedBatchSampler(10, 100, batch_size=8, generated_fraction=0.5, epoch_size=40)
    batches = list(sampler)
    real = [[i for i in b if i < 10] for b in batches]
    assert [len(r) for r in real] == [4, 4, 2, 4, 4]
    assert [len(b) - len(r) for b, r in zip(batches, real, strict=True)] == [4, 4, 6, 4, 4]
    assert sorted(real[0] + real[1] + real[2]) == list(range(10)), "the first pass is a permutation"
    assert len(set(real[3] + real[4])) == 8


@pytest.mark.parametrize(
    ("batch", "fraction", "real"), [(128, 0.7, 39), (1024, 0.7, 308), (2048, 0.8, 410), (10, 0.0, 10)]
)
def test_real_share_is_batch_minus_floor_of_fraction(batch, fraction, real):
    sampler = MixedBatchSampler(5000, 5000, batch_size=batch, generated_fraction=fraction)
    assert {sum(i < 5000 for i in b) for b in list(sampler)[:3]} == {real}


def test_generated_draws_are_uniform_with_replacement():
    sampler = MixedBatchSampler(100, 10, batch_size=100, generated_fraction=0.9, epoch_size=100_000)
    counts = np.bincount([i - 100 for b in sampler for i in b if i >= 100], minlength=10)
    assert counts.sum() == 1000 * 90
    assert counts.min() > 0.95 * 9000 and counts.max() < 1.05 * 9000
    assert len(set(i for b in list(sampler)[:1] for i in b if i >= 100)) <= 10  # repeats within a batch


def test_without_replacement_never_repeats_a_generated_image_in_an_epoch():
    sampler = MixedBatchSampler(
        50, 400, batch_size=20, generated_fraction=0.7, epoch_size=500, sampling="without_replacement"
    )
    generated = [i for b in sampler for i in b if i >= 50]
    # 6 real per batch; a pass of 50 is 8 chunks of 6 and one of 2, and 25 batches hold two short chunks
    assert len(generated) == 25 * 14 + 2 * 4 and len(set(generated)) == len(generated)
    with pytest.raises(DataError, match="with_replacement"):
        MixedBatchSampler(
            50, 100, batch_size=20, generated_fraction=0.7, epoch_size=500, sampling="without_replacement"
        )


@pytest.mark.parametrize("bad", [{"generated_fraction": 1.0}, {"generated_fraction": -0.1}, {"sampling": "bootstrap"}])
def test_bad_mixing_settings_are_data_errors(bad):
    with pytest.raises(DataError):
        MixedBatchSampler(10, 10, batch_size=4, **bad)


# ------------------------------------------------------------------ replay and DDP
def test_each_epoch_is_a_pure_function_of_seed_and_epoch():
    a = MixedBatchSampler(300, 3000, batch_size=32, seed=5)
    b = MixedBatchSampler(300, 3000, batch_size=32, seed=5)
    a.set_epoch(3)
    first = list(a)
    list(a)  # iterating again, or other epochs in between, changes nothing
    a.set_epoch(1)
    list(a)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == first == list(b)
    b.set_epoch(4)
    assert list(b) != first
    assert list(MixedBatchSampler(300, 3000, batch_size=32, seed=6)) != list(
        MixedBatchSampler(300, 3000, batch_size=32)
    )


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_ddp_ranks_split_the_global_batch_with_disjoint_shards(world_size, sampling):
    kwargs = {"batch_size": 48, "generated_fraction": 0.7, "seed": 3, "epoch_size": 480, "sampling": sampling}
    single = list(MixedBatchSampler(200, 2000, **kwargs))
    ranks = [list(MixedBatchSampler(200, 2000, rank=r, world_size=world_size, **kwargs)) for r in range(world_size)]
    assert all(len(r) == len(single) == 10 for r in ranks)
    seen_generated: dict[int, int] = {}
    for step, reference in enumerate(single):
        parts = [ranks[r][step] for r in range(world_size)]
        assert all(len(p) == 48 // world_size for p in parts)
        real = [[i for i in p if i < 200] for p in parts]
        # together the ranks hold exactly the single-process real chunk, each within one image of its share
        assert sorted(i for r in real for i in r) == sorted(i for i in reference if i < 200)
        assert max(map(len, real)) - min(map(len, real)) <= 1
        for r, part in enumerate(parts):
            for i in part:
                if i >= 200:
                    assert (i - 200) % world_size == r, "a rank draws only from its own shard"
                    seen_generated.setdefault(i, r)
                    assert seen_generated[i] == r, "no generated image on two ranks in an epoch"
    if sampling == "without_replacement":
        drawn = [i for r in ranks for b in r for i in b if i >= 200]
        assert len(set(drawn)) == len(drawn)


def test_loader_replays_the_epoch_after_set_epoch(tmp_path):
    write_generated_npz(tmp_path / "gen.npz", 100, 10, value=200)
    datasets = generated_datasets(
        real=_digits, path=str(tmp_path / "gen.npz"), generated_fraction=0.75, max_train_samples=64, augment="none"
    )
    train, _ = build_loaders(datasets, batch_size=16, seed=7)
    assert len(train) == 4  # ceil(64 / 16)
    set_epoch(train, 2)
    epoch2 = [(x.clone(), y.clone()) for x, y in train]
    set_epoch(train, 1)
    [b for b in train]
    set_epoch(train, 2)
    for (x, y), (x2, y2) in zip(epoch2, train, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # the trainer's record of a batch (for a non-finite loss report) is the batch that was trained on
    indices = _batch_sample_indices(train, 2, 3)
    assert indices == list(train.batch_sampler)[3] and len(indices) == 16


def test_batches_mix_real_and_generated_images_in_the_configured_ratio(tmp_path):
    """Generated images are one grey level (200) the digits never are: count them in real batches."""
    write_generated_npz(tmp_path / "gen.npz", 300, 10, value=200)
    datasets = generated_datasets(
        real=_digits,
        path=str(tmp_path / "gen.npz"),
        generated_fraction=0.7,
        max_train_samples=100,
        max_test_samples=16,
        augment="crop",
    )
    assert datasets.num_classes == 10 and datasets.normalized is False and datasets.crop_flip is None
    train, test = build_loaders(datasets, batch_size=20)
    assert len(test.dataset) == 16
    counts = []
    for x, _ in train:
        assert x.shape == (20, 3, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
        # a random crop pads with zeros, so test the centre: a grey-200 image is 200/255 there
        centre = x[:, :, 8:24, 8:24].flatten(1)
        is_generated = (centre - 200 / 255).abs().amax(dim=1) < 1e-6
        counts.append(int(is_generated.sum()))
    assert counts == [14] * 5  # 20 - (20 - int(20 * 0.7)) = 14 of every 20; ceil(100 / 20) = 5 batches


def test_ddp_loaders_load_each_ranks_share(tmp_path):
    write_generated_npz(tmp_path / "gen.npz", 200, 10)
    datasets = generated_datasets(real=_digits, path=str(tmp_path / "gen.npz"), max_train_samples=64, augment="none")
    loaders = [build_loaders(datasets, batch_size=32, rank=r, world_size=2)[0] for r in range(2)]
    for loader in loaders:
        set_epoch(loader, 0)
    sizes = [[len(y) for _, y in loader] for loader in loaders]
    assert sizes == [[16, 16], [16, 16]]


def test_subset_of_the_generated_images_is_dm_ats_seeded_choice(tmp_path):
    _, labels = write_generated_npz(tmp_path / "gen.npz", 500, 10)
    datasets = generated_datasets(
        real=_digits, path=str(tmp_path / "gen.npz"), max_generated_samples=50, max_train_samples=32, augment="none"
    )
    generated = datasets.train.generated
    expected = np.sort(np.random.RandomState(13).choice(500, 50, replace=False))
    np.testing.assert_array_equal(generated.indices, expected)
    np.testing.assert_array_equal(generated.label_array(), labels[expected])


def test_label_range_is_checked_against_the_real_data_set(tmp_path):
    write_generated_npz(tmp_path / "gen.npz", 50, 100)  # CIFAR-100 labels for a 10-class real set
    with pytest.raises(DataError, match="10 classes"):
        generated_datasets(real=_digits, path=str(tmp_path / "gen.npz"), augment="none")


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("dataset", ["cifar10_generated", "cifar100_generated"])
def test_generated_dataset_configs_compose_for_at(dataset):
    cfg = compose_config("train_at", [f"dataset={dataset}"])
    assert cfg.dataset.builder._target_ == "ikl.data.generated_datasets"
    assert cfg.dataset.builder.real.name == dataset.removesuffix("_generated")
    assert cfg.dataset.builder.normalize is False and cfg.dataset.builder.generated_fraction == 0.7
    assert str(cfg.dataset.builder.path).endswith(f"{dataset.removesuffix('_generated')}/1m.npz")


def test_digits_generated_config_builds(tmp_path):
    from hydra.utils import instantiate

    write_generated_npz(tmp_path / "gen.npz", 40, 10)
    cfg = compose_config(
        "train_at",
        [
            "dataset=digits_generated",
            f"dataset.builder.path={tmp_path / 'gen.npz'}",
            "dataset.builder.max_train_samples=32",
        ],
    )
    datasets = instantiate(cfg.dataset.builder)
    assert len(datasets.train) == 32 + 40 and datasets.train_batch_sampler is not None


# ------------------------------------------------------------------ exact resume through train_at.py
@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted_with_generated_data(tmp_path):
    """64 real digits + 200 generated images, batch 16 (4 real + 12 generated), 4 steps per epoch,
    2 loader workers (each maps the .npz itself): SIGTERM after step 6 (epoch 2, batch 2), resume,
    and every checkpoint and metric record equals an uninterrupted run's."""
    from tests.reliability.helpers import Proc, compare_runs, isolated, run

    write_generated_npz(tmp_path / "gen.npz", 200, 10, seed=4)
    common = [
        "dataset=digits_generated",
        f"dataset.builder.path={tmp_path / 'gen.npz'}",
        "dataset.builder.max_train_samples=64",
        "dataset.builder.max_test_samples=32",
        "batch_size=16",
        "test_batch_size=16",
        "trainer.epochs=2",
        "trainer.workers=2",
        "trainer.save_every=1",
        "trainer.progress=false",
        "logger.mode=disabled",
        "model=resnet8",
        "monitor.samples=16",
        "monitor.steps=2",
        "compare_to_ce=false",
        "scheduler=one_cycle",
        *isolated(tmp_path),
    ]
    run("train_at.py", [*common, f"run_dir={tmp_path / 'a'}"], logs=tmp_path / "a-logs")
    args = [*common, f"run_dir={tmp_path / 'b'}"]
    stopped = Proc("train_at.py", args, logs=tmp_path / "stopped", env={"IKL_TEST_SIGTERM_AFTER_STEP": "6"})
    assert stopped.finish() == 143, stopped.stderr[-2000:]
    assert "saved epoch 2 at batch 2/4" in stopped.stderr
    resumed = Proc("train_at.py", [*args, "resume=true"], logs=tmp_path / "resumed")
    assert resumed.finish() == 0, resumed.stderr[-2000:]
    compared = compare_runs(tmp_path / "a", tmp_path / "b")
    assert compared["files"] >= 3 and compared["records"] > 0
