"""Long-tailed evaluation: shot groups, per-group accuracy (known answers and the official ``shot_acc``
rule), the ImageNet-LT data set read from generated split files, and the group metrics of a real run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ikl.data import DataError, group_accuracies, imagenet_lt_datasets, read_split_file, shot_groups
from ikl.engine.sink import MetricSink
from ikl.engine.trainer import Trainer, TrainSettings, evaluate_classifier
from ikl.tasks import DistillationTask
from tests.runutils import ROOT, compose_config

spec = importlib.util.spec_from_file_location("make_image_tree", ROOT / "scripts" / "make_image_tree.py")
make_image_tree = sys.modules.setdefault("make_image_tree", importlib.util.module_from_spec(spec))
spec.loader.exec_module(make_image_tree)


def official_shot_acc(preds, labels, train_labels, many=100, few=20):
    """Oracle: the official rule (DKLv1/Imbalanced_KD-dkl/utils.py shot_acc), written from its description:
    over the classes present in ``labels``, the per-class accuracy, averaged within count > many,
    count < few and the rest; a group with no class gives nothing here (the official code returns 0)."""
    preds, labels, train_labels = (np.asarray(a) for a in (preds, labels, train_labels))
    groups = {"many": [], "medium": [], "few": []}
    for c in np.unique(labels):
        n_train = int((train_labels == c).sum())
        acc = float((preds[labels == c] == c).mean())
        name = "many" if n_train > many else "few" if n_train < few else "medium"
        groups[name].append(acc)
    return {k: 100.0 * float(np.mean(v)) for k, v in groups.items() if v}


def test_shot_groups_use_the_official_thresholds():
    counts = [101, 100, 20, 19, 0, 1280, 5]
    assert shot_groups(counts) == {"many": (0, 5), "medium": (1, 2), "few": (3, 4, 6)}
    assert shot_groups(counts, many_threshold=19, few_threshold=5) == {
        "many": (0, 1, 2, 5),
        "medium": (3, 6),
        "few": (4,),
    }
    with pytest.raises(ValueError, match="must not exceed"):
        shot_groups(counts, many_threshold=10, few_threshold=20)


def test_group_accuracy_is_the_mean_of_class_accuracies_not_the_pooled_one():
    # class 0: 9/10, class 1: 1/2 (both many) -> mean 70 % (pooled would be 10/12 = 83.3 %);
    # class 2: 0/4 (few); class 3 has no evaluated image and is ignored; "medium" holds only class 3.
    correct = torch.tensor([9.0, 1.0, 0.0, 0.0])
    total = torch.tensor([10.0, 2.0, 4.0, 0.0])
    groups = {"many": (0, 1), "medium": (3,), "few": (2,)}
    assert group_accuracies(correct, total, groups) == {"many": pytest.approx(70.0), "few": 0.0}
    with pytest.raises(ValueError, match="names class 7"):
        group_accuracies(correct, total, {"many": (7,)})


def test_group_accuracies_match_the_official_rule_on_random_data():
    rng = np.random.default_rng(0)
    train_labels = np.repeat(np.arange(30), rng.integers(1, 200, size=30))
    labels = rng.integers(0, 30, size=700)
    preds = np.where(rng.random(700) < 0.6, labels, rng.integers(0, 30, size=700))
    groups = shot_groups(np.bincount(train_labels, minlength=30))
    correct = np.bincount(labels[preds == labels], minlength=30)
    total = np.bincount(labels, minlength=30)
    ours = group_accuracies(correct, total, groups)
    oracle = official_shot_acc(preds, labels, train_labels)
    assert ours.keys() == oracle.keys() == {"many", "medium", "few"}
    for name in ours:
        assert ours[name] == pytest.approx(oracle[name], abs=1e-9)


class EchoClassifier(nn.Module):
    """Predicts the class written in pixel (0, 0, 0) of each image: the right answer is known."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.bias = nn.Parameter(torch.zeros(num_classes))  # something for an optimizer to hold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), self.num_classes).float() * 10 + self.bias


def echo_loader(preds: list[int], labels: list[int], batch_size: int = 3) -> DataLoader:
    x = torch.zeros(len(preds), 3, 2, 2)
    x[:, 0, 0, 0] = torch.tensor(preds, dtype=torch.float32)
    return DataLoader(TensorDataset(x, torch.tensor(labels)), batch_size=batch_size)


# 4 classes; class 0 right 3/4, class 1 right 1/2, class 2 right 0/2, class 3 right 2/2
PREDS = [0, 0, 0, 1, 1, 0, 3, 3, 3, 3]
LABELS = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]


def test_evaluate_classifier_counts_per_class():
    result = evaluate_classifier(EchoClassifier(4), echo_loader(PREDS, LABELS), torch.device("cpu"), num_classes=4)
    assert result["acc"] == pytest.approx(60.0)
    assert result["class_correct"].tolist() == [3.0, 1.0, 0.0, 2.0]
    assert result["class_n"].tolist() == [4.0, 2.0, 2.0, 2.0]
    plain = evaluate_classifier(EchoClassifier(4), echo_loader(PREDS, LABELS), torch.device("cpu"))
    assert "class_correct" not in plain and plain["acc"] == result["acc"]


def test_trainer_evaluation_adds_the_group_accuracies(tmp_path):
    model = EchoClassifier(4)
    task = DistillationTask(model)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(
        task,
        sgd,
        torch.optim.lr_scheduler.StepLR(sgd, 1),
        echo_loader(PREDS, LABELS),
        echo_loader(PREDS, LABELS),
        TrainSettings(epochs=1, progress=False),
        run_dir=tmp_path,
        sink=MetricSink(tmp_path, enabled=False, mode="disabled"),
        weights_meta={"num_classes": 4},
        class_groups={"many": (0, 1), "medium": (2,), "few": (3,)},
    )
    metrics = trainer.evaluate(1)
    assert metrics["test/acc"] == pytest.approx(60.0)
    assert metrics["test/acc_many"] == pytest.approx((75.0 + 50.0) / 2)
    assert metrics["test/acc_medium"] == 0.0 and metrics["test/acc_few"] == 100.0
    trainer.class_groups = {}
    assert not any(k.startswith("test/acc_m") for k in trainer.evaluate(1))


# ----------------------------------------------------------------------------- the data set
@pytest.fixture(scope="module")
def lt_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet_lt")
    splits = make_image_tree.write_imagenet_lt(root, classes=5, most=25, fewest=2, test=3, size=24)
    return root, splits


def test_imagenet_lt_reads_the_split_files_and_groups_by_train_counts(lt_tree):
    root, splits = lt_tree
    data = imagenet_lt_datasets(root=str(root), num_classes=5, image_size=16, many_threshold=10, few_threshold=4)
    counts = make_image_tree.long_tail_counts(5, 25, 2)  # [25, 13, 7, 4, 2]
    assert len(data.train) == sum(counts) and len(data.test) == 15 and data.num_classes == 5
    assert data.class_groups == {"many": (0, 1), "medium": (2, 3), "few": (4,)}
    assert sorted(data.train.targets) == sorted(label for _, label in splits["train"])
    first_path, first_label = splits["train"][0]
    assert data.train.samples[0] == (str(root / first_path), first_label)
    kinds = {Path(p).suffix for p, _ in data.train.samples}
    assert kinds == {".JPEG", ".png"}  # both formats are read
    image, label = data.test[0]
    assert image.shape == (3, 16, 16) and label == splits["test"][0][1]
    assert data.normalized and data.mean == (0.485, 0.456, 0.406)


def test_imagenet_lt_split_dir_and_val_split(lt_tree, tmp_path):
    root, splits = lt_tree
    for split in ("train", "val"):
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text((root / f"ImageNet_LT_{split}.txt").read_text())
    data = imagenet_lt_datasets(root=str(root), split_dir=str(tmp_path), test_split="val", num_classes=5, image_size=8)
    assert data.test.targets == [label for _, label in splits["val"]]
    # default thresholds 100 / 20 on 25, 13, 7, 4, 2 training images
    assert data.class_groups == {"many": (), "medium": (0,), "few": (1, 2, 3, 4)}


def test_imagenet_lt_subsets_count_groups_on_what_is_trained(lt_tree):
    root, _ = lt_tree
    data = imagenet_lt_datasets(
        root=str(root), num_classes=5, image_size=8, many_threshold=5, few_threshold=3, max_train_samples=10
    )
    assert len(data.train) == 10
    counts = np.bincount(data.train.targets, minlength=5)
    assert data.class_groups == shot_groups(counts, many_threshold=5, few_threshold=3)


@pytest.mark.parametrize(
    "content, match",
    [
        ("train/a.JPEG\n", "line 1 is 'train/a.JPEG', not '<relative path> <label>'"),
        ("train/a.JPEG 0\ntrain/b.JPEG x\n", "line 2"),
        ("train/a.JPEG 7\n", "label 7 is outside \\[0, 5\\)"),
        ("\n\n", "lists no images"),
    ],
)
def test_a_malformed_split_file_is_one_line(tmp_path, content, match):
    path = tmp_path / "ImageNet_LT_train.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        read_split_file(path, 5)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_split_file_root_or_image_say_what_to_set(lt_tree, tmp_path):
    root, _ = lt_tree
    with pytest.raises(DataError, match="ImageNet_LT_train.txt does not exist; the split files come with") as info:
        imagenet_lt_datasets(root=str(root), split_dir=str(tmp_path), num_classes=5)
    assert "dataset.builder.split_dir" in str(info.value)
    with pytest.raises(DataError, match="ImageNet root .* does not exist"):
        imagenet_lt_datasets(root=str(tmp_path / "nowhere"), num_classes=5)
    (tmp_path / "train").mkdir()
    for split in ("train", "test"):
        (tmp_path / f"ImageNet_LT_{split}.txt").write_text((root / f"ImageNet_LT_{split}.txt").read_text())
    with pytest.raises(DataError, match="are relative to dataset.builder.root") as info:
        imagenet_lt_datasets(root=str(tmp_path), num_classes=5)  # split files, but the images are elsewhere
    assert "\n" not in str(info.value)


def test_an_unreadable_image_is_one_line(lt_tree, tmp_path):
    root, splits = lt_tree
    data = imagenet_lt_datasets(root=str(root), num_classes=5, image_size=8)
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(b"not a jpeg")
    data.train.samples[1] = (str(broken), 0)
    with pytest.raises(DataError, match="cannot read .*broken.JPEG .*listed in") as info:
        data.train[1]
    assert "\n" not in str(info.value) and "skip_bad_images=true" in str(info.value)
    lines = (root / "ImageNet_LT_train.txt").read_text().splitlines()
    (tmp_path / "ImageNet_LT_train.txt").write_text("\n".join([*lines, "../broken.JPEG 0"]) + "\n")
    (tmp_path / "ImageNet_LT_test.txt").write_text((root / "ImageNet_LT_test.txt").read_text())
    (root.parent / "broken.JPEG").write_bytes(b"not a jpeg")  # listed relative to root as ../broken.JPEG
    kept = imagenet_lt_datasets(root=str(root), split_dir=str(tmp_path), num_classes=5, skip_bad_images=True)
    assert len(kept.train) == len(lines) and all("broken" not in p for p, _ in kept.train.samples)


def test_dataset_config_composes_with_the_official_defaults():
    cfg = compose_config("train_kd", ["dataset=imagenet_lt"])
    builder = cfg.dataset.builder
    assert builder._target_ == "ikl.data.imagenet_lt_datasets" and builder.split_dir == builder.root
    assert (builder.train_split, builder.test_split, builder.many_threshold, builder.few_threshold) == (
        "train",
        "test",
        100,
        20,
    )
    assert cfg.trainer.epochs == 90 and cfg.batch_size == 128  # recipe/kd_imagenet_lt.yaml


# ----------------------------------------------------------------------------- a real run
@pytest.mark.slow
def test_a_run_logs_group_accuracies_that_match_its_final_model(lt_tree, tmp_path, one_thread):
    """Train one epoch on the generated tree, then recompute the shot accuracies of the saved final
    model with the official rule: the logged test/acc_many, _medium, _few must be exactly those."""
    from ikl.cli import train_kd
    from ikl.models import create_model

    root, splits = lt_tree
    overrides = [
        "dataset=imagenet_lt",
        f"dataset.builder.root={root}",
        "dataset.num_classes=5",
        "dataset.image_size=32",
        "dataset.builder.many_threshold=10",
        "dataset.builder.few_threshold=4",
        "loss=ce",
        "student=resnet8",
        "scheduler=official_lt_cosine",
        "trainer.epochs=2",
        "trainer.workers=0",
        "trainer.progress=false",
        "batch_size=8",
        "test_batch_size=4",
        "logger.mode=disabled",
        f"run_dir={tmp_path / 'run'}",
    ]
    summary = train_kd.run(compose_config("train_kd", overrides))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_epoch = [r for r in records if "test/acc" in r]
    assert len(per_epoch) == 2 and all(
        {"test/acc_many", "test/acc_medium", "test/acc_few"} <= r.keys() for r in per_epoch
    )
    assert summary["steps"] == 2 * (51 // 8)  # drop_last (recipe/kd_imagenet_lt.yaml)

    model = create_model("resnet8", 5)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "final.pt", weights_only=True)["model"])
    model.eval()
    data = imagenet_lt_datasets(root=str(root), num_classes=5, image_size=32)
    with torch.no_grad():
        preds = [int(model(data.test[i][0][None]).argmax()) for i in range(len(data.test))]
    train_labels = [label for _, label in splits["train"]]
    oracle = official_shot_acc(preds, data.test.targets, train_labels, many=10, few=4)
    for name in ("many", "medium", "few"):
        assert summary[f"test_acc_{name}_last"] == pytest.approx(oracle[name], abs=1e-9), name
        assert per_epoch[-1][f"test/acc_{name}"] == pytest.approx(oracle[name], abs=1e-9), name
