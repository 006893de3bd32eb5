"""SIGTERM mid-epoch: a resumable checkpoint is saved, and resuming gives the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import pytest

from ikl.engine.checkpoint import load_checkpoint
from tests.reliability.helpers import AT_OVERRIDES, Proc, compare_runs, isolated, kd_overrides
from tests.reliability.report import REPORT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("train_kd.py", marks=pytest.mark.jobs("kd-uninterrupted-1")),
        pytest.param("train_at.py", marks=pytest.mark.jobs("at-uninterrupted-1")),
    ],
)
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path, jobs, shared_files, script):
    common = kd_overrides(shared_files["teacher"]) if script == "train_kd.py" else AT_OVERRIDES
    args = [*common, *isolated(tmp_path), f"run_dir={tmp_path / 'b'}"]

    # 64 samples / batch 16 = 4 steps per epoch: stop after step 6, i.e. mid-way through epoch 2
    stopped = Proc(script, args, logs=tmp_path / "stopped", env={"IKL_TEST_SIGTERM_AFTER_STEP": "6"})
    assert stopped.finish() == 143, stopped.stderr[-2000:]
    assert "SIGTERM received: saved epoch 2 at batch 2/4" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    partial = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert partial["epoch"] == 1 and partial["step"] == 6 and partial["epoch_in_progress"]["epoch"] == 2

    resumed = Proc(script, [*args, "resume=true"], logs=tmp_path / "resumed")
    assert resumed.finish() == 0, resumed.stderr[-2000:]
    reference: Path = jobs.get(f"{script[6:8]}-uninterrupted-1")
    compared = compare_runs(reference, tmp_path / "b")
    REPORT.add(
        "kill",
        "SIGTERM after step 6 (epoch 2, batch 2/4)",
        script,
        f"exit 143, one line: {stopped.stderr.strip().splitlines()[-1]}; the mid-epoch last.pt loads "
        "(epoch 1 done, step 6, epoch 2 in progress)",
        f"yes: after resume=true, {compared['files']} checkpoint files and {compared['records']} metric records "
        "equal the uninterrupted run",
    )
