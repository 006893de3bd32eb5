"""examples/custom_data_and_model: the documented way to bring your own data set and model (docs/custom.md),
run as a user runs it: the builder contract directly, then both training routes end to end (shrunk)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ikl.data import DataError, Datasets
from tests.runutils import ROOT, run_entry

EXAMPLE = ROOT / "examples" / "custom_data_and_model"
SHRINK = [
    "dataset.builder.train_per_class=8",
    "dataset.builder.test_per_class=4",
    "trainer.epochs=1",
    "teacher.auto_train_epochs=1",
    "logger.mode=disabled",
    "trainer.progress=false",
]


def test_the_builder_follows_the_datasets_contract():
    from examples.custom_data_and_model.my_project import TinyCNN, shapes_datasets

    data = shapes_datasets(train_per_class=5, test_per_class=2, image_size=24)
    assert isinstance(data, Datasets) and data.num_classes == 3 and data.normalized
    assert (len(data.train), len(data.test)) == (15, 6)
    image, label = data.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 24) and isinstance(label, int)
    assert data.train.data.dtype.name == "uint8" and data.crop_flip is not None  # device-loader ready
    assert len(data.mean) == len(data.std) == 3 and all(0 < s < 1 for s in data.std)
    assert TinyCNN(3)(image[None]).shape == (1, 3)
    with pytest.raises(DataError, match="at least one image per class"):
        shapes_datasets(train_per_class=0)


def _summary(out: Path, student: str) -> dict:
    (found,) = [s for s in (json.loads(p.read_text()) for p in out.rglob("summary.json")) if s["student"] == student]
    return found


@pytest.mark.slow
def test_configs_with_a_target_for_the_data_and_the_model(tmp_path):
    proc = run_entry(
        "train_kd.py",
        [
            "--config-dir",
            str(EXAMPLE / "configs"),
            "dataset=shapes",
            "student=tiny_cnn",
            f"out_dir={tmp_path}",
            *SHRINK,
        ],
        env={"IKL_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(tmp_path, "tiny_cnn")
    assert (summary["dataset"], summary["student"], summary["teacher"], summary["epochs"]) == (
        "shapes",
        "tiny_cnn",
        "resnet8",
        1,
    )
    (final,) = tmp_path.rglob("kd-shapes-*/*/checkpoints/final.pt")
    state = torch.load(final, weights_only=True)
    assert "features.0.weight" in state["model"] and state["model_name"] == "tiny_cnn"


@pytest.mark.slow
def test_python_with_a_registered_model(tmp_path):
    proc = run_entry(
        "examples/custom_data_and_model/my_project.py",
        [f"out_dir={tmp_path}", *SHRINK],
        env={"IKL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)},  # as an installed ikl would be
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(tmp_path, "tiny_cnn_py")
    assert (summary["dataset"], summary["teacher"]) == ("shapes", "resnet8") and summary["acc_last"] is not None
    assert _summary(tmp_path, "resnet8")["loss"] == "ce"  # the teacher it trained first
