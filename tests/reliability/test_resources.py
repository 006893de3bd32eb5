"""Resource faults: an output directory that cannot be created, a disk that fills up mid-save or
mid-log. The message is one line; the previous checkpoint survives; resuming loses nothing.

The suite runs as root in CI, where permissions stop nothing, so "not writable" is a path whose
parent is a regular file, and "disk full" is an ``OSError(ENOSPC)`` raised by a patched writer
after it has written part of the file.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch

import ikl.engine.checkpoint as checkpoint_module
import ikl.engine.sink as sink_module
from ikl.engine.checkpoint import load_checkpoint
from tests.reliability.helpers import cli, compare_runs, isolated, kd_overrides, one_line
from tests.reliability.report import REPORT

pytestmark = pytest.mark.slow

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line(code: int, stderr: str) -> str:
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    return one_line(stderr)


def test_run_dir_whose_parent_is_a_regular_file(tmp_path, shared_files):
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file where a directory should be\n")
    run_dir = blocker / "run"
    code, stderr = cli(
        "train_kd.py", [*kd_overrides(shared_files["teacher"]), *isolated(tmp_path), f"run_dir={run_dir}"]
    )
    line = _one_line(code, stderr)
    assert f"cannot create the run dir {run_dir}: Not a directory" in line
    assert blocker.read_text() == "a regular file where a directory should be\n"
    REPORT.add("resources", "run_dir=<a regular file>/run (train_kd.py)", code, line, "yes: nothing was written")


def test_eval_output_dir_whose_parent_is_a_regular_file(tmp_path, shared_files):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    args = [
        f"checkpoint={shared_files['teacher']}",
        "model=resnet8",
        "dataset=digits",
        "n_ex=4",
        "batch_size=4",
        "version=custom",
        "attacks=[apgd-ce]",
        f"output_dir={blocker / 'out'}",
        "results_dir=null",
        "logger.mode=disabled",
        "device=cpu",
    ]
    code, stderr = cli("eval_autoattack.py", args)
    errors = [line for line in stderr.splitlines() if line.split(":")[0].endswith("Error")]
    shown = f"a traceback: {errors[-1]}" if "Traceback" in stderr and errors else one_line(stderr)
    REPORT.add(
        "resources",
        "output_dir=<a regular file>/out (eval_autoattack.py)",
        code,
        shown,
        "yes: nothing was written",
    )
    _one_line(code, stderr)


def _resume_and_compare(args: list[str], run_dir: Path, reference: Path) -> dict[str, int]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference subprocess (OMP_NUM_THREADS=1)
    try:
        code, stderr = cli("train_kd.py", [*args, "resume=true"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, stderr
    return compare_runs(reference, run_dir)


@pytest.mark.jobs("kd-uninterrupted-1")
def test_disk_full_while_writing_a_checkpoint(tmp_path, shared_files, monkeypatch, jobs):
    run_dir = tmp_path / "run"
    args = [*kd_overrides(shared_files["teacher"]), *isolated(tmp_path), f"run_dir={run_dir}"]
    real_save = torch.save
    cut = {}

    def disk_fills_up(obj, f, *rest, **kwargs):
        if isinstance(obj, dict) and obj.get("kind") == "train-state" and obj.get("epoch") == 2:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            cut["written"] = len(buffer.getvalue()) // 2
            f.write(buffer.getvalue()[: cut["written"]])
            raise ENOSPC
        return real_save(obj, f, *rest, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_up)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, stderr = cli("train_kd.py", args)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    line = _one_line(code, stderr)
    last = run_dir / "checkpoints" / "last.pt"
    assert f"could not write checkpoint {last}: No space left on device; the file there before was not replaced" in line
    assert load_checkpoint(last)["epoch"] == 1 and cut["written"] > 0
    assert not list(last.parent.glob(".last.pt.*.tmp")), "the partial file was left behind"
    compared = _resume_and_compare(args, run_dir, jobs.get("kd-uninterrupted-1"))
    REPORT.add(
        "resources",
        "disk full while writing epoch 2's last.pt: the writer wrote half the file, then OSError(ENOSPC) (train_kd.py)",
        code,
        line,
        f"yes: last.pt loads and is epoch 1; the partial temporary file was removed; resume=true then ended equal "
        f"to the uninterrupted run ({compared['files']} checkpoint files, {compared['records']} metric records)",
    )


@pytest.mark.jobs("kd-uninterrupted-1")
def test_disk_full_while_appending_metrics(tmp_path, shared_files, monkeypatch, jobs):
    run_dir = tmp_path / "run"
    args = [*kd_overrides(shared_files["teacher"]), *isolated(tmp_path), f"run_dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.pt"

    def disk_full_after_epoch_1(file, mode="r", *rest, **kwargs):
        if mode == "a" and Path(file).name == "metrics.jsonl" and last.is_file():
            raise ENOSPC
        return open(file, mode, *rest, **kwargs)

    monkeypatch.setattr(sink_module, "open", disk_full_after_epoch_1, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, stderr = cli("train_kd.py", args)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    line = _one_line(code, stderr)
    assert f"could not append to {run_dir / 'metrics.jsonl'}: No space left on device" in line
    assert load_checkpoint(last)["epoch"] == 1
    compared = _resume_and_compare(args, run_dir, jobs.get("kd-uninterrupted-1"))
    REPORT.add(
        "resources",
        "disk full while appending to metrics.jsonl (the first record after epoch 1's checkpoint) (train_kd.py)",
        code,
        line,
        f"yes: last.pt loads and is epoch 1; resume=true then ended equal to the uninterrupted run "
        f"({compared['files']} checkpoint files, {compared['records']} metric records)",
    )
