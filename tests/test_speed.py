"""The speed switches on the CPU: bf16 autocast, channels_last, the device loader, torch.compile,
the teacher under inference mode, and the training benchmark's smoke mode."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from ikl.cli import compose, train_kd
from ikl.data import DeviceCIFARLoader, set_epoch
from ikl.engine.distributed import DistInfo
from ikl.losses import IKLLoss
from ikl.models import create_model
from ikl.tasks import DistillationTask
from tests.runutils import ROOT, TINY_DIGITS, compose_config


def kd_overrides(tmp_path: Path, teacher_file: Path, *extra: str) -> list[str]:
    """Two training steps of 16 and one evaluation batch: enough to see every switch at work."""
    return [
        *TINY_DIGITS,
        "dataset.builder.max_train_samples=32",
        "dataset.builder.max_test_samples=16",
        "student=resnet8",
        "teacher=resnet8",
        f"teacher.checkpoint={teacher_file}",
        f"run_dir={tmp_path / 'run'}",
        "trainer.epochs=1",
        "trainer.device=cpu",
        *extra,
    ]


@pytest.fixture
def seen(monkeypatch) -> dict[str, list]:
    """Make train_kd build a DistillationTask that records what its networks and losses see."""
    record: dict[str, list] = {"tasks": [], "student": [], "teacher": [], "losses": []}

    class RecordingTask(DistillationTask):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.in_step = False
            record["tasks"].append(self)
            self.model.register_forward_hook(self._student_hook)
            if self.teacher is not None:
                self.teacher.register_forward_hook(self._teacher_hook)

        def _student_hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
            if self.in_step:
                x = inputs[0]
                record["student"].append(
                    {
                        "dtype": output.dtype,
                        "autocast": torch.is_autocast_enabled("cpu"),
                        "channels_last_input": x.is_contiguous(memory_format=torch.channels_last),
                    }
                )

        def _teacher_hook(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
            if self.in_step:
                record["teacher"].append(
                    {
                        "dtype": output.dtype,
                        "inference_mode": torch.is_inference_mode_enabled(),
                        "inference_tensor": output.is_inference(),
                    }
                )

        def forward(self, x, y, *, epoch):
            self.in_step = self.training
            try:
                out = super().forward(x, y, epoch=epoch)
            finally:
                self.in_step = False
            if self.training:
                record["losses"].append({k: v.detach() for k, v in out.items() if k.startswith("loss")})
            return out

    monkeypatch.setattr(train_kd, "DistillationTask", RecordingTask)
    return record


def assert_losses_float32_and_finite(losses: list[dict[str, torch.Tensor]]) -> None:
    assert losses, "no training step ran"
    for step in losses:
        assert {"loss", "loss_ce", "loss_wmse", "loss_sce"} <= step.keys()
        for name, value in step.items():
            assert value.dtype == torch.float32, f"{name} is {value.dtype}"
            assert torch.isfinite(value).all(), f"{name} = {value}"


def test_teacher_runs_under_inference_mode():
    task = DistillationTask(create_model("resnet8", 10), create_model("resnet8", 10), IKLLoss(num_classes=10))
    calls = []
    task.teacher.register_forward_hook(
        lambda m, i, o: calls.append((torch.is_inference_mode_enabled(), o.is_inference()))
    )
    task.train()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = task.teacher_logits(x)
    assert calls == [(True, True)], "the teacher must run under torch.inference_mode"
    assert not logits.is_inference(), "teacher logits must be a normal tensor after the clone"
    out = task(x, y, epoch=1)
    out["loss"].backward()
    assert calls[-1] == (True, True)
    assert all(p.grad is not None for p in task.model.parameters())


def test_bf16_autocast_trains_with_float32_losses(tmp_path, teacher_file, seen):
    summary = train_kd.run(compose_config("train_kd", kd_overrides(tmp_path, teacher_file, "trainer.amp=bf16")))
    assert summary["epochs"] == 1 and math.isfinite(summary["acc_last"])
    assert seen["student"] and all(r["autocast"] and r["dtype"] == torch.bfloat16 for r in seen["student"])
    assert seen["teacher"] and all(r["dtype"] == torch.bfloat16 for r in seen["teacher"])
    assert all(r["inference_mode"] and r["inference_tensor"] for r in seen["teacher"])
    assert_losses_float32_and_finite(seen["losses"])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if "train/loss" in r)
    assert all(math.isfinite(v) for k, v in epoch.items() if k.startswith("train/loss"))


def test_amp_off_is_float32(tmp_path, teacher_file, seen):
    train_kd.run(compose_config("train_kd", kd_overrides(tmp_path, teacher_file)))
    assert seen["student"] and all(not r["autocast"] and r["dtype"] == torch.float32 for r in seen["student"])
    assert_losses_float32_and_finite(seen["losses"])


def test_channels_last_trains_with_channels_last_weights(tmp_path, teacher_file, seen):
    summary = train_kd.run(
        compose_config("train_kd", kd_overrides(tmp_path, teacher_file, "trainer.channels_last=true"))
    )
    assert summary["epochs"] == 1
    (task,) = seen["tasks"]
    convs = [m for m in task.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for conv in convs:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last), conv
    assert seen["student"] and all(r["channels_last_input"] for r in seen["student"])
    assert_losses_float32_and_finite(seen["losses"])


def build_train_loader(overrides: list[str]):
    cfg = compose_config("train_kd", [*TINY_DIGITS, "dataset.builder.max_train_samples=200", *overrides])
    session = types.SimpleNamespace(device=torch.device("cpu"), dist=DistInfo())
    _, train_loader, _ = compose.build_data(cfg, session)
    return train_loader


def epoch_labels(loader, epoch: int) -> tuple[list[int], list[int], list[torch.Tensor]]:
    set_epoch(loader, epoch)
    labels, sizes, images = [], [], []
    for x, y in loader:
        labels += y.tolist()
        sizes.append(len(y))
        images.append(x)
    return labels, sizes, images


def test_device_loader_epochs_match_the_standard_loader():
    standard = build_train_loader(["trainer.loader=standard", "trainer.workers=0"])
    device = build_train_loader(["trainer.loader=device", "trainer.channels_last=true"])
    assert isinstance(device, DeviceCIFARLoader) and not isinstance(standard, DeviceCIFARLoader)
    assert len(device) == len(standard)
    for epoch in (1, 2):
        std_labels, std_sizes, std_images = epoch_labels(standard, epoch)
        dev_labels, dev_sizes, dev_images = epoch_labels(device, epoch)
        assert dev_sizes == std_sizes and sum(dev_sizes) == 200
        assert Counter(dev_labels) == Counter(std_labels)
        assert dev_labels == std_labels, "same seed and epoch: the same sample order"
        for a, b in zip(std_images, dev_images, strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
            assert b.is_contiguous(memory_format=torch.channels_last)
            assert b.min() >= 0 and b.max() <= 1  # digits are not normalised
    assert epoch_labels(device, 1)[0] != epoch_labels(device, 2)[0], "epochs are shuffled differently"


@pytest.mark.slow
def test_device_loader_trains_as_well_as_the_standard_loader(tmp_path, one_thread):
    # 6 epochs of 20 steps, lr 0.1 decayed after epoch 4: seeds 0, 1, 2 gave 87.5/80.0, 85.0/89.0 and
    # 75.0/84.5 % (standard/device); the loaders see the same order and differ only in crop draws.
    common = [
        *TINY_DIGITS,
        "dataset.builder.max_train_samples=320",
        "dataset.builder.max_test_samples=200",
        "test_batch_size=200",
        "loss=ce",
        "student=resnet8",
        "trainer.epochs=6",
        "trainer.device=cpu",
        "trainer.workers=0",
        "optimizer.lr=0.1",
        "scheduler.milestones=[4]",
    ]
    accuracy = {}
    for loader in ("standard", "device"):
        overrides = [*common, f"trainer.loader={loader}", f"run_dir={tmp_path / loader}"]
        accuracy[loader] = train_kd.run(compose_config("train_kd", overrides))["acc_last"]
    assert min(accuracy.values()) > 50, accuracy  # chance is 10%
    assert abs(accuracy["device"] - accuracy["standard"]) <= 20, accuracy


def cxx_compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


@pytest.mark.slow
@pytest.mark.skipif(cxx_compiler() is None, reason="torch.compile on the CPU (inductor) needs a C++ compiler (g++)")
def test_compile_trains_a_tiny_model(tmp_path, teacher_file, seen, monkeypatch, one_thread):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)  # no pool of compile workers on a small CPU
    overrides = kd_overrides(tmp_path, teacher_file, "trainer.compile=true")
    try:
        summary = train_kd.run(compose_config("train_kd", overrides))
    finally:
        torch._dynamo.reset()  # later tests start from an empty compile cache
    assert summary["epochs"] == 1 and math.isfinite(summary["acc_last"])
    (task,) = seen["tasks"]
    assert hasattr(task.model, "_orig_mod"), "trainer.compile=true must hand the trainer a compiled model"
    assert_losses_float32_and_finite(seen["losses"])


@pytest.mark.slow
def test_bench_train_quick_writes_its_table(tmp_path):
    out = tmp_path / "bench_train.md"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = out.read_text()
    for heading in ("## Train loaders alone", "## IKL-KD", "## IKL-AT", "## Notes"):
        assert heading in table
    assert "failed" not in table, table
    assert "| official |" in table and "| fast |" in table
    assert "AMD" in table or "CPU:" in table


def test_bench_train_offers_the_opt_in_configurations_where_they_apply():
    from scripts import bench_train

    args = types.SimpleNamespace(amp="auto", compile="auto")
    names = lambda device, task: [c.name for c in bench_train.configurations(torch.device(device), args, 2, task)]  # noqa: E731
    assert names("cuda", "kd") == ["official", "fast", "graphs", "graphs + compile"]
    assert names("cuda", "at") == ["official", "fast", "fast + amp attack"]
    assert names("cpu", "kd") == names("cpu", "at") == ["official", "fast"]  # no graphs, no bf16 on the CPU
    graphs = bench_train.configurations(torch.device("cuda"), args, 2, "kd")[2]
    assert graphs.cuda_graphs and graphs.amp == "bf16" and graphs.channels_last and not graphs.compile
