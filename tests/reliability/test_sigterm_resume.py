"""SIGTERM mid-epoch: a resumable checkpoint is saved, and resuming gives the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ikl.engine.checkpoint import load_checkpoint
from tests.runutils import TINY_DIGITS, run_entry, save_teacher

pytestmark = pytest.mark.slow


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "train/images_per_s"}
        for line in lines
    ]


@pytest.mark.parametrize(
    "script,extra",
    [
        ("train_kd.py", ["loss=ikl_gi"]),
        (
            "train_at.py",
            [
                "model=resnet8",
                "monitor.samples=16",
                "monitor.steps=2",
                "compare_to_ce=false",
                "awp.warmup_epoch=1",
                "ema.iter_start=0.5",
            ],
        ),
    ],
)
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path, script, extra):
    teacher = tmp_path / "teacher.pth"
    save_teacher(teacher)
    common = [
        *TINY_DIGITS,
        "trainer.epochs=2",
        "trainer.log_every=1",
        "teacher=resnet8",
        "student=resnet8",
        f"teacher.checkpoint={teacher}",
        *extra,
    ]
    if script == "train_at.py":
        common = [o for o in common if not o.startswith(("teacher", "student"))]
    straight = run_entry(script, [*common, f"run_dir={tmp_path / 'a'}"])
    assert straight.returncode == 0, straight.stderr[-2000:]

    # 64 samples / batch 16 = 4 steps per epoch: stop after step 6, i.e. mid-way through epoch 2
    stopped = run_entry(script, [*common, f"run_dir={tmp_path / 'b'}"], env={"IKL_TEST_SIGTERM_AFTER_STEP": "6"})
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "SIGTERM received: saved epoch 2 at batch 2/4" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    partial = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert partial["epoch"] == 1 and partial["step"] == 6 and partial["epoch_in_progress"]["epoch"] == 2

    resumed = run_entry(script, [*common, f"run_dir={tmp_path / 'b'}", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for part, state in a["task"].items():
        if isinstance(state, dict):
            for key, value in state.items():
                assert torch.equal(value, b["task"][part][key]), f"{part}.{key}"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for index, slot in a["optimizer"]["state"].items():
        assert torch.equal(slot["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert _records(tmp_path / "a") == _records(tmp_path / "b")
