"""A run directory belongs to one run (CONVENTIONS rule 11; ikl/cli/rundir.py).

Each test drives the real entry points (in-process through the real Hydra command line, or as real
processes where a second writer or a hard kill is the point) and checks what a user would: the
bytes of every file of the run before and after, the exit status and the one line printed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ikl.cli import rundir
from ikl.engine.checkpoint import load_checkpoint, nonfinite_tensors, save_checkpoint
from tests.datautils import write_fake_cifar10, write_fake_image_folder
from tests.reliability.helpers import AT_OVERRIDES, Proc, cli, job, kd_overrides, one_line
from tests.reliability.report import REPORT
from tests.runutils import compose_config
from tests.wandb_reader import history_rows

pytestmark = pytest.mark.slow


def hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below ``folder`` (run.json, run.lock, config.yaml, logs, checkpoints...)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def refused(code: int, stderr: str, *named: str) -> str:
    line = one_line(stderr)
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr[-2000:]
    assert line.startswith("error: ") and all(n in line for n in named), line
    return line


def short(text: str, tmp: Path) -> str:
    return text.replace(str(tmp), "<tmp>")


def kd(teacher: Path, out: Path, *extra: str) -> list[str]:
    """The suite's tiny KD run (2 epochs of 4 steps, IKL with GI), everything under ``out``."""
    return [*kd_overrides(teacher), f"out_dir={out}", *extra]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, shared_files) -> Path:
    """A KD run stopped after epoch 1 of 2 (resumable), in the default layout under its out_dir."""
    out = tmp_path_factory.mktemp("integrity") / "outputs"
    code, stderr = cli("train_kd.py", kd(shared_files["teacher"], out, "trainer.stop_after=1"))
    assert code == 0, stderr
    (run,) = out.glob("*/*/run.json")
    return run.parent


def copy_run(run: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of ``run`` in its own out_dir: (out_dir, run dir)."""
    out = tmp / "outputs"
    target = out / run.parent.name / run.name
    shutil.copytree(run, target)
    return out, target


# --------------------------------------------------------------------------- 1. one configuration
def test_resume_true_finds_its_run_by_identity_not_by_name(tmp_path, stopped_run, shared_files):
    out, run = copy_run(stopped_run, tmp_path)
    before = hashes(run)
    code, stderr = cli("train_kd.py", kd(shared_files["teacher"], out, "resume=true", "loss.prior_temperature=2"))
    assert code == 0, stderr
    assert hashes(run) == before, "a tau=2 resume wrote into the tau=4 run"
    (other,) = [p.parent for p in out.glob("*/*/run.json") if p.parent != run]
    assert load_checkpoint(other / "checkpoints" / "last.pt")["epoch"] == 2
    code, stderr = cli("train_kd.py", kd(shared_files["teacher"], out, "resume=true"))
    assert code == 0, stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert len(json.loads((run / "run.json").read_text())["attempts"]) == 2
    REPORT.add(
        "integrity",
        "1. one configuration",
        "resume=true loss.prior_temperature=2 beside a stopped run of the same name (prior_temperature 4)",
        "a new run started in its own dir; resume=true with the run's own settings then continued the run",
        "every file of the first run byte-identical (SHA-256) after the tau=2 command",
    )


RESUME_REFUSALS = [
    ("train_kd.py", ["loss.prior_temperature=2"], "loss.prior_temperature: 4 -> 2"),
    ("train_kd.py", ["loss.wmse_weight=3", "seed=1"], "loss.wmse_weight: 8 -> 3; seed: 0 -> 1"),
    ("train_kd.py", ["batch_size=8"], "batch_size: 16 -> 8"),
    ("train_kd.py", ["trainer.amp=bf16"], "trainer.amp: 'off' -> 'bf16'"),
    ("train_kd.py", ["trainer.workers=1"], "trainer.workers: 0 -> 1"),  # the augmentation's random streams
    ("train_kd.py", ["dataset.builder.max_train_samples=32"], "dataset.builder.max_train_samples: 64 -> 32"),
    (
        "train_at.py",
        [*AT_OVERRIDES],
        "is a train_kd.py (knowledge distillation) run; it cannot be resumed by train_at.py",
    ),
]


def test_a_resume_with_other_settings_is_refused_and_writes_nothing(tmp_path, stopped_run, shared_files):
    _, run = copy_run(stopped_run, tmp_path)
    before = hashes(run)
    for script, extra, named in RESUME_REFUSALS:
        base = kd(shared_files["teacher"], tmp_path / "elsewhere") if script == "train_kd.py" else []
        code, stderr = cli(script, [*base, *extra, f"resume={run}"])
        line = refused(code, stderr, named)
        assert hashes(run) == before
        REPORT.add(
            "integrity",
            "1. one configuration",
            f"{script} resume=<run> {' '.join(e for e in extra if e not in AT_OVERRIDES) or '(its own defaults)'}",
            short(line, tmp_path),
            "exit 2; every file byte-identical",
        )


def test_a_cpu_resume_with_another_thread_count_is_refused(tmp_path, stopped_run, shared_files):
    import torch

    _, run = copy_run(stopped_run, tmp_path)
    before = hashes(run)
    threads = torch.get_num_threads()
    try:
        extra = [f"trainer.threads={threads + 1}", f"resume={run}"]
        code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), *extra])
    finally:
        torch.set_num_threads(threads)
    line = refused(code, stderr, f"placement.cpu_threads: {threads} -> {threads + 1}")
    assert hashes(run) == before
    REPORT.add(
        "integrity",
        "1. one configuration",
        "a CPU run resumed with one more intra-op thread (the float sums change order)",
        short(line, tmp_path),
        "exit 2; every file byte-identical",
    )


def test_allowed_changes_continue_the_run_and_are_recorded(tmp_path, stopped_run, shared_files):
    _, run = copy_run(stopped_run, tmp_path)
    extra = ["trainer.epochs=3", "trainer.log_every=2", "logger.mode=offline", "trainer.save_every=2"]
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), *extra, f"resume={run}"])
    assert code == 0, stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    changed = json.loads((run / "run.json").read_text())["attempts"][-1]["changed"]
    assert changed["trainer.epochs"] == [2, 3] and changed["logger.mode"] == ["disabled", "offline"]
    REPORT.add(
        "integrity",
        "1. one configuration",
        f"resume=<run> {' '.join(extra)} (all in MAY_CHANGE_ON_RESUME)",
        "continued to epoch 3; run.json's attempt entry records each changed key with old and new value",
        "resumed; the change is on record",
    )


def test_a_changed_continuation_is_a_new_run_from_the_old_weights(tmp_path, stopped_run, shared_files):
    _, run = copy_run(stopped_run, tmp_path)
    before = hashes(run)
    start = run / "checkpoints" / "last.pt"
    new = tmp_path / "continued"
    extra = ["loss.prior_temperature=2", f"init_from={start}", f"run_dir={new}", "trainer.epochs=1"]
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), *extra])
    assert code == 0, stderr
    assert hashes(run) == before
    identity = json.loads((new / "run.json").read_text())["identity"]["settings"]
    assert identity["init_from.sha256"] == rundir.file_sha256(start)
    # its continuation need not repeat init_from, nor care that the source run went on meanwhile
    save_checkpoint({**load_checkpoint(start), "epoch": 7}, start)
    resume = [e for e in extra if not e.startswith(("init_from", "trainer.epochs"))] + [
        "trainer.epochs=2",
        "resume=true",
    ]
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), *resume])
    assert code == 0, stderr
    assert (
        load_checkpoint(new / "checkpoints" / "last.pt")["identity"]["settings"]["init_from.sha256"]
        == identity["init_from.sha256"]
    )
    REPORT.add(
        "integrity",
        "1. one configuration",
        "a changed continuation: loss.prior_temperature=2 init_from=<run>/checkpoints/last.pt run_dir=<new>",
        "a new run whose model starts from the old weights; its identity holds init_from's SHA-256",
        "the old run byte-identical",
    )


def test_at_refuses_a_longer_schedule_on_resume(tmp_path):
    run = tmp_path / "at"
    code, stderr = cli("train_at.py", [*AT_OVERRIDES, f"run_dir={run}", "trainer.stop_after=1"])
    assert code == 0, stderr
    before = hashes(run)
    code, stderr = cli("train_at.py", [*AT_OVERRIDES, f"run_dir={run}", "resume=true", "trainer.epochs=3"])
    line = refused(code, stderr, "trainer.epochs: 2 -> 3")
    assert hashes(run) == before
    REPORT.add(
        "integrity",
        "1. one configuration",
        "train_at.py resume=true trainer.epochs=3 (the eps ramp, cosine lr and EMA start depend on the epochs)",
        short(line, tmp_path),
        "exit 2; every file byte-identical",
    )


def test_an_old_checkpoint_without_identity_is_refused(tmp_path, stopped_run, shared_files):
    _, run = copy_run(stopped_run, tmp_path)
    last = run / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["identity"]
    save_checkpoint(state, last)
    before = hashes(run)
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), f"resume={run}"])
    line = refused(code, stderr, "carries no run identity", "init_from=")
    assert hashes(run) == before
    REPORT.add(
        "integrity",
        "1. one configuration",
        "resume from a last.pt without an identity (older ikl)",
        short(line, tmp_path),
        "exit 2; byte-identical",
    )


def test_sweep_jobs_resume_only_their_own_runs(tmp_path, shared_files):
    out = tmp_path / "outputs"
    sweep = ["loss.prior_temperature=1,4", f"hydra.sweep.dir={out / 'sweep1'}"]
    code, stderr = cli("train_kd.py", ["-m", *kd(shared_files["teacher"], out, "trainer.stop_after=1"), *sweep])
    assert code == 0, stderr
    runs = sorted(p.parent for p in (out / "sweep1").glob("*/run.json"))
    names = [json.loads((r / "run.json").read_text()) for r in runs]
    assert len(runs) == 2
    run_names = [(r / "config.yaml").read_text().split("run_name: ")[1].split("\n")[0] for r in runs]
    assert len(set(run_names)) == 2 and all("prior_temperature=" in n for n in run_names), run_names
    again = ["loss.prior_temperature=1,4", f"hydra.sweep.dir={out / 'sweep2'}", "resume=true"]
    code, stderr = cli("train_kd.py", ["-m", *kd(shared_files["teacher"], out), *again])
    assert code == 0, stderr
    for run, marker in zip(runs, names, strict=True):
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        assert state["epoch"] == 2 and state["identity"] == marker["identity"]
        assert len(json.loads((run / "run.json").read_text())["attempts"]) == 2
    accuracies = [load_checkpoint(r / "checkpoints" / "last.pt")["task"]["criterion"]["prior.prior"] for r in runs]
    assert not (accuracies[0] == accuracies[1]).all(), "both jobs continued the same run"
    REPORT.add(
        "integrity",
        "1. one configuration",
        "-m loss.prior_temperature=1,4 stopped after epoch 1, then the same sweep with resume=true",
        f"each job resumed its own run (names {', '.join(run_names)}); the priors of the two runs differ",
        "2 runs, 2 attempts each, each checkpoint's identity its own",
    )


def test_a_resumed_sweep_over_an_allowed_key_keeps_each_job_in_its_own_run(tmp_path, shared_files):
    """trainer.epochs may change on resume, so both jobs of `trainer.epochs=1,2` have one identity."""
    out = tmp_path / "outputs"
    for n in (1, 2):
        args = [
            "-m",
            *kd(shared_files["teacher"], out),
            "trainer.epochs=1,2",
            "resume=true",
            f"hydra.sweep.dir={out / f's{n}'}",
        ]
        code, stderr = cli("train_kd.py", args)
        assert code == 0, stderr
    runs = sorted(p.parent for p in out.glob("*/*/run.json"))
    assert len(runs) == 2, runs
    epochs = sorted(load_checkpoint(r / "checkpoints" / "last.pt")["epoch"] for r in runs)
    assert epochs == [1, 2], epochs
    REPORT.add(
        "integrity",
        "1. one configuration",
        "-m trainer.epochs=1,2 resume=true, twice (the two jobs share an identity: epochs may change)",
        "each job resumed its own run (a run another job of the sweep has taken, or with another value of a swept key, is skipped)",
        "2 runs: 1 and 2 epochs",
    )


def test_a_resume_on_other_data_is_refused(tmp_path):
    first = write_fake_cifar10(tmp_path / "a", per_batch=8, test=10, seed=0)
    other = write_fake_cifar10(tmp_path / "b", per_batch=8, test=10, seed=1)
    run = tmp_path / "run"
    code, stderr = cli("train_kd.py", [*cifar_args(first, run), "trainer.epochs=2", "trainer.stop_after=1"])
    assert code == 0, stderr
    before = hashes(run)
    code, stderr = cli("train_kd.py", [*cifar_args(other, run), "trainer.epochs=2", "resume=true"])
    line = refused(code, stderr, "was trained on other data")
    assert hashes(run) == before
    code, stderr = cli("train_kd.py", [*cifar_args(first, run), "trainer.epochs=2", "resume=true"])
    assert code == 0, stderr
    REPORT.add(
        "integrity",
        "1. one configuration",
        "resume with dataset.builder.root pointing at another copy of CIFAR-10 (other images and labels)",
        short(line, tmp_path),
        "exit 2; byte-identical; the original data then resumed",
    )


def test_stop_after_always_leaves_a_checkpoint_to_resume(tmp_path, shared_files):
    run = tmp_path / "run"
    args = [*kd(shared_files["teacher"], tmp_path / "o"), f"run_dir={run}", "trainer.epochs=2", "trainer.save_every=2"]
    code, stderr = cli("train_kd.py", [*args, "trainer.stop_after=1"])
    assert code == 0, stderr
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    REPORT.add(
        "integrity",
        "1. one configuration",
        "trainer.stop_after=1 with trainer.save_every=2",
        "last.pt of epoch 1 written (the stop epoch)",
        "resumable",
    )


def test_a_damaged_config_yaml_does_not_block_a_resume(tmp_path, stopped_run, shared_files):
    _, run = copy_run(stopped_run, tmp_path)
    (run / "config.yaml").write_text("run_name: [unclosed\n")
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), f"resume={run}"])
    assert code == 0, stderr
    assert "run_name:" in (run / "config.yaml").read_text() and "[unclosed" not in (run / "config.yaml").read_text()


def test_the_ce_baseline_keeps_the_at_run_locked(tmp_path, monkeypatch):
    from ikl.cli import train_at

    run = tmp_path / "at"
    seen = []
    real = train_at.ce_baseline_config

    def spy(cfg, run_dir):
        seen.append(rundir.busy(run))
        return real(cfg, run_dir)

    monkeypatch.setattr(train_at, "ce_baseline_config", spy)
    args = [a for a in AT_OVERRIDES if not a.startswith("compare_to_ce")]
    code, stderr = cli("train_at.py", [*args, f"run_dir={run}", "compare_to_ce=true", "trainer.epochs=1"])
    assert code == 0, stderr
    assert seen and seen[0] is not None and "pid" in seen[0]
    assert rundir.busy(run) is None
    REPORT.add(
        "integrity",
        "2. one writer",
        "train_at.py compare_to_ce=true: its CE baseline trains inside the run dir",
        "the AT run stays locked until its summary (with the baseline's numbers) is written",
        "lock held throughout",
    )


# ------------------------------------------------------------------------------- 2. one writer
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


@job("second-writer", priority=4)
def second_writer(tmp: Path, shared: dict) -> dict:
    """A run hangs mid-epoch; a second process targets its dir; the first is SIGKILLed; resume works."""
    run = tmp / "run"
    args = [*kd_overrides(shared["teacher"]), f"out_dir={tmp / 'o'}", f"run_dir={run}"]
    marker = tmp / "hang"
    first = Proc(
        "train_kd.py",
        args,
        logs=tmp / "first",
        env={"IKL_TEST_HANG_AFTER_STEP": "5", "IKL_TEST_HANG_MARKER": str(marker)},
        hooked=True,
    )
    first.wait_for(marker.exists, "the first run reaching step 5")
    before = hashes(run)
    second = Proc("train_kd.py", [*args, "resume=true"], logs=tmp / "second")
    second_code = second.finish()
    after_second = hashes(run)
    third = Proc("train_kd.py", args, logs=tmp / "third")  # resume=false, the same explicit run_dir
    third_code = third.finish()
    after_third = hashes(run)
    pid = first.popen.pid
    first.kill()
    final = Proc("train_kd.py", [*args, "resume=true"], logs=tmp / "final")
    return {
        "pid": pid,
        "second": (second_code, second.stderr),
        "third": (third_code, third.stderr),
        "unchanged": before == after_second == after_third,
        "final": (final.finish(), final.stderr),
        "epoch": load_checkpoint(run / "checkpoints" / "last.pt")["epoch"],
        "tmp": tmp,
    }


@pytest.mark.jobs("second-writer")
def test_a_run_dir_has_one_writer_and_a_dead_one_does_not_block(jobs):
    result = jobs.get("second-writer")
    tmp = result["tmp"]
    for key, what in (("second", "resume=true"), ("third", "resume=false (the same run_dir)")):
        line = refused(*result[key], "is in use by pid", str(result["pid"]), "one run dir has one writer")
        REPORT.add(
            "integrity",
            "2. one writer",
            f"a second process ({what}) on the run dir of a live run (hung at step 5)",
            short(line, tmp),
            "exit 2; every file of the live run byte-identical",
        )
    assert result["unchanged"]
    code, stderr = result["final"]
    assert code == 0, stderr[-3000:]
    assert result["epoch"] == 2
    REPORT.add(
        "integrity",
        "2. one writer",
        "SIGKILL of the live run, then resume=true (its lock file stays behind)",
        "the kernel released the dead process's flock; the resume ran to the end (epoch 2)",
        "a stale lock never blocks",
    )


def test_a_default_dir_taken_in_the_same_second_gives_a_fresh_one(tmp_path, shared_files, monkeypatch):
    taken = tmp_path / "outputs" / "name" / "2026-01-01_00-00-00"
    taken.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(taken / rundir.LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(rundir, "default_run_dir", lambda out_dir, run_name: taken)
        code, stderr = cli("train_kd.py", kd(shared_files["teacher"], tmp_path / "outputs", "trainer.epochs=1"))
    finally:
        holder.kill()
        holder.wait()
    assert code == 0, stderr
    fresh = taken.with_name(taken.name + "-1")
    assert (fresh / "run.json").is_file() and [p.name for p in taken.iterdir()] == [rundir.LOCK]
    REPORT.add(
        "integrity",
        "2. one writer",
        "the time-stamped default run dir is locked by another process started in the same second",
        "this run took a fresh sibling (<dir>-1)",
        "the other process's dir untouched",
    )


# ------------------------------------------------------------------ 3. nothing of a user's overwritten
def test_a_folder_that_is_not_a_run_is_never_written(tmp_path, shared_files):
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    (mine / "checkpoints").mkdir()
    (mine / "checkpoints" / "last.pt").write_bytes(b"not ours")
    before = hashes(mine)
    for extra in ([], ["resume=true"]):
        code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), f"run_dir={mine}", *extra])
        line = refused(code, stderr, "is not an ikl run directory")
        assert hashes(mine) == before and sorted(p.name for p in mine.iterdir()) == ["checkpoints", "thesis.tex"]
        REPORT.add(
            "integrity",
            "3. nothing of a user's overwritten",
            f"run_dir=<a folder of the user's> {' '.join(extra)}".strip(),
            short(line, tmp_path),
            "exit 2; no file added, none changed",
        )


def test_an_unfinished_attempt_of_another_configuration_is_not_dropped(tmp_path, shared_files, one_thread):
    """one_thread: as the killed subprocess (OMP_NUM_THREADS=1); the thread count is part of the identity."""
    run = tmp_path / "run"
    marker = tmp_path / "hang"
    args = [*kd_overrides(shared_files["teacher"]), f"out_dir={tmp_path / 'o'}", f"run_dir={run}"]
    proc = Proc(
        "train_kd.py",
        args,
        logs=tmp_path / "first",
        env={"IKL_TEST_HANG_AFTER_STEP": "2", "IKL_TEST_HANG_MARKER": str(marker)},
        hooked=True,
    )
    proc.wait_for(marker.exists, "step 2")
    proc.kill()
    assert (run / "metrics.jsonl").read_text() and not (run / "checkpoints" / "last.pt").exists()
    before = hashes(run)
    code, stderr = cli("train_kd.py", [*args, "loss.prior_temperature=2"])
    line = refused(code, stderr, "was started with other settings", "loss.prior_temperature: 4 -> 2")
    assert hashes(run) == before
    code, stderr = cli("train_kd.py", args)  # the same configuration: its killed attempt is restarted
    assert code == 0, stderr
    REPORT.add(
        "integrity",
        "3. nothing of a user's overwritten",
        "a killed attempt (no checkpoint yet), then a fresh start in its run_dir with loss.prior_temperature=2",
        short(line, tmp_path),
        "its metrics kept (byte-identical); the same configuration then restarted it",
    )


# ----------------------------------------------------------------- 4. validated before the first byte
def test_refusals_leave_every_file_of_a_run_byte_identical(tmp_path, stopped_run, shared_files, monkeypatch):
    _, run = copy_run(stopped_run, tmp_path)
    before = hashes(run)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    cases = [
        ("trainer.epochs=2.5", "trainer.epochs=2.5 must be a whole number"),
        ("seed=abc", "seed='abc' must be a whole number"),
        ("trainer.epoch=3", "did you mean trainer.epochs?"),
        ("optimizer.lr=null", "optimizer.lr is null but needs a value"),
        ("optimizer.lr=nan", "optimizer.lr=nan must be a finite number"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay=-0.1 must be >= 0"),
        ("optimizer.momentum=1.5", "optimizer.momentum=1.5 must be in [0, 1)"),
        ("trainer.device=cuda", "no CUDA device is visible"),
        ("teacher.expected_acc=99", "expected 99"),
        (f"teacher.checkpoint={empty}", "is empty (0 bytes"),
        (f"teacher.checkpoint={tmp_path}", "is a directory"),
        ("run_name=" + "x" * 300, "bytes long"),
        ("trainer.channels_last=maybe", "must be true or false"),
        ("trainer.amp=fp8", "trainer.amp='fp8' is not one of off, bf16, fp16"),
        ("logger.mode=online", "W&B has no login here"),
        ("logger.mode=loud", "logger.mode='loud' is not one of"),
        ("loss.temperature=abc", "loss.temperature='abc' must be a number"),
        ("loss.temperature=true", "loss.temperature=True must be a number"),
        ("trainer.stop_after=abc", "trainer.stop_after='abc' must be a whole number or null"),
        ("trainer.threads=abc", "trainer.threads='abc' must be a whole number or null"),
        ("out_dir=null", "out_dir is empty or null"),
        ("loss.prior_temperature=2", "loss.prior_temperature: 4 -> 2"),
    ]
    for override, named in cases:
        if "cuda" in override and __import__("torch").cuda.is_available():
            continue
        code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), f"resume={run}", override])
        line = refused(code, stderr, named)
        assert hashes(run) == before, override
        REPORT.add(
            "integrity",
            "4. validated first",
            f"resume=<run> {override[:60]}",
            short(line, tmp_path)[:300],
            "exit 2; SHA-256 of every file unchanged",
        )
    # an unwritable checkpoints folder (root ignores permissions, so access() is made to say no)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "checkpoints" and real_access(p, mode))
    code, stderr = cli("train_kd.py", [*kd(shared_files["teacher"], tmp_path / "o"), f"resume={run}"])
    monkeypatch.undo()
    line = refused(code, stderr, "cannot write to", "checkpoints")
    assert hashes(run) == before
    REPORT.add(
        "integrity",
        "4. validated first",
        "resume=<run> with checkpoints/ not writable",
        short(line, tmp_path),
        "exit 2; unchanged",
    )


def test_error_hints_name_keys_that_exist(tmp_path):
    from ikl.cli.overrides import _has_key

    hints = {}
    for dataset, extra in (
        ("cifar10", [f"dataset.builder.root={tmp_path}", "dataset.builder.download=false"]),
        ("imagenet", [f"dataset.builder.train_root={tmp_path}/none"]),
    ):
        code, stderr = cli(
            "train_kd.py",
            [f"dataset={dataset}", *extra, "loss=ce", "logger.mode=disabled", f"run_dir={tmp_path / dataset}"],
        )
        line = refused(code, stderr)
        key = line.split(" set ", 1)[1].split("=", 1)[0]
        assert _has_key(compose_config("train_kd", [f"dataset={dataset}"]), key), (dataset, key)
        hints[dataset] = key
    REPORT.add(
        "integrity",
        "9. one line",
        "the hints of a missing CIFAR root / ImageNet folder",
        f"name {hints['cifar10']} and {hints['imagenet']}",
        "both keys exist in the composed configs",
    )


# ------------------------------------------------------------------- 5. data files cannot run code
class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cifar_args(root: Path, run: Path) -> list[str]:
    """A plain CE run on the CIFAR-10 files under ``root`` (never downloaded)."""
    return [
        "dataset=cifar10",
        f"dataset.builder.root={root}",
        "dataset.builder.download=false",
        "loss=ce",
        "trainer.epochs=1",
        f"run_dir={run}",
        "logger.mode=disabled",
    ]


def test_a_crafted_cifar_pickle_runs_no_code(tmp_path, shared_files):
    root = write_fake_cifar10(tmp_path / "data", per_batch=8, test=10)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    marker = tmp_path / "pwned"
    with open(batch, "wb") as handle:
        pickle.dump({"data": Exploit(marker), "labels": [0]}, handle, protocol=2)
    args = cifar_args(root, tmp_path / "run")
    code, stderr = cli("train_kd.py", args)
    line = refused(code, stderr, str(batch), "could run code")
    assert not marker.exists() and not (tmp_path / "run").exists()
    REPORT.add(
        "integrity",
        "5. data runs no code",
        "a CIFAR batch whose pickle calls os.system",
        short(line, tmp_path),
        "no code ran (marker absent); no run dir",
    )


def test_labels_out_of_range_and_unreadable_images_are_one_line(tmp_path, caplog):
    from tests.datautils import py2_pickle

    root = write_fake_cifar10(tmp_path / "data", per_batch=8, test=10)
    batch = root / "cifar-10-batches-py" / "test_batch"
    entry = load_pickle_plain(batch)
    entry["labels"][3] = 10
    batch.write_bytes(py2_pickle(entry))
    args = cifar_args(root, tmp_path / "run")
    code, stderr = cli("train_kd.py", args)
    line = refused(code, stderr, str(batch), "label 10 is outside [0, 10)")
    REPORT.add(
        "integrity",
        "5. data runs no code",
        "a CIFAR test batch with label 10",
        short(line, tmp_path),
        "exit 2 before training",
    )
    tree = tmp_path / "images"
    write_fake_image_folder(tree / "train", classes=2, per_class=4)
    write_fake_image_folder(tree / "val", classes=2, per_class=2, seed=1)
    bad = sorted((tree / "train").rglob("*.png"))[1]
    bad.write_bytes(b"not an image")
    common = [
        "dataset=imagenet",
        f"dataset.builder.train_root={tree / 'train'}",
        f"dataset.builder.val_root={tree / 'val'}",
        "dataset.num_classes=2",
        "dataset.builder.image_size=32",
        "loss=ce",
        "student=resnet8",
        "trainer.epochs=1",
        "batch_size=4",
        "test_batch_size=4",
        "logger.mode=disabled",
        "trainer.progress=false",
    ]
    for workers in (0, 1):
        code, stderr = cli(
            "train_kd.py", [*common, f"trainer.workers={workers}", f"run_dir={tmp_path / f'run{workers}'}"]
        )
        line = refused(code, stderr, str(bad), "cannot be read as an image", "skip_bad_images=true")
        REPORT.add(
            "integrity",
            "5. data runs no code",
            f"an unreadable image in an ImageFolder tree (trainer.workers={workers})",
            short(line, tmp_path),
            "exit 2; checkpoints so far intact",
        )
    skip = [*common, "dataset.builder.skip_bad_images=true", "trainer.workers=0", f"run_dir={tmp_path / 'skip'}"]
    code, stderr = cli("train_kd.py", skip)
    assert code == 0, stderr
    assert "skipping 1 unreadable image files" in caplog.text
    REPORT.add(
        "integrity",
        "5. data runs no code",
        "the same with dataset.builder.skip_bad_images=true",
        "trained; the file was left out and counted",
        "exit 0",
    )


def load_pickle_plain(path: Path):
    from ikl.data.safe_pickle import load_pickle

    return load_pickle(path)


# ------------------------------------------------------------------- 6. "intact" is verified
def test_weights_that_diverge_while_the_loss_looks_finite_stop_the_run(tmp_path, shared_files):
    run = tmp_path / "run"
    args = [
        *kd_overrides(shared_files["teacher"]),
        "batch_size=64",  # one step per epoch: epoch 2's only update overflows, its loss was still finite
        "optimizer.lr=1e-6",
        "loss.ce_weight=10000",  # gradients of order 1e4 ...
        "scheduler.milestones=[1]",
        "scheduler.gamma=3.4e44",  # ... times lr 3.4e38 (the largest float32) in epoch 2: the update overflows
        f"run_dir={run}",
        f"out_dir={tmp_path / 'o'}",
    ]
    code, stderr = cli("train_kd.py", args)
    last = run / "checkpoints" / "last.pt"
    line = refused(
        code,
        stderr,
        "model state became non-finite by epoch 2",
        "while the loss stayed finite",
        f"the last good checkpoint {last} (epoch 1) is intact (checked:",
    )
    report = json.loads((run / "nonfinite_batch.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and not nonfinite_tensors(state) and report["nonfinite_tensors"]
    REPORT.add(
        "integrity",
        "6. intact is verified",
        "a real divergence: CE weight 1e4 and, from epoch 2, lr 3.4e38 (one step per epoch)",
        short(line, tmp_path),
        "last.pt is epoch 1's, loads, all finite; nonfinite_batch.json strict JSON",
    )


def test_a_nan_loss_report_is_strict_json(tmp_path, shared_files, monkeypatch):
    monkeypatch.setenv("IKL_TEST_NAN_AT_STEP", "5")
    run = tmp_path / "run"
    code, stderr = cli(
        "train_kd.py", [*kd_overrides(shared_files["teacher"]), f"run_dir={run}", f"out_dir={tmp_path / 'o'}"]
    )
    line = refused(code, stderr, "loss became non-finite", "is intact (checked: it loads, all tensors finite)")
    report = json.loads((run / "nonfinite_batch.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert any(v == "nan" or (isinstance(v, float) and math.isnan(v)) for v in report["terms"].values())
    REPORT.add(
        "integrity",
        "6. intact is verified",
        "a NaN loss at step 5",
        short(line, tmp_path)[:240],
        'nonfinite_batch.json parses as strict JSON (NaN written as "nan")',
    )


# ------------------------------------------------------------------ 7. sweeps survive one bad job
def test_a_sweep_runs_every_good_job_and_ends_nonzero_with_a_table(tmp_path, shared_files):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        *kd(shared_files["teacher"], tmp_path / "o", "trainer.epochs=1"),
        "loss.prior_temperature=2,0,4",
        f"hydra.sweep.dir={sweep}",
    ]
    code, stderr = cli("train_kd.py", args)
    assert code == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: loss.prior_temperature=0 must be > 0") and "1 of 3 jobs failed" in errors[-1]
    table = (sweep / "sweep_summary.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "job" not in line]
    assert len(rows) == 3 and "completed" in rows[0] and "failed" in rows[1] and "completed" in rows[2], table
    assert (sweep / "sweep_summary.csv").read_text().count("\n") == 4
    REPORT.add(
        "integrity",
        "7. sweeps",
        "-m loss.prior_temperature=2,0,4 (the middle value is invalid)",
        "jobs 0 and 2 ran to the end; job 1 printed its line; sweep_summary.md/.csv list all three; exit 1",
        "policy: run every job, fail at the end",
    )


# ------------------------------------------------------------- 8. W&B history survives a hard kill
@job("wandb-kill", priority=4)
def wandb_kill(tmp: Path, shared: dict) -> dict:
    run = tmp / "run"
    args = [*kd_overrides(shared["teacher"]), f"out_dir={tmp / 'o'}", f"run_dir={run}", "logger.mode=offline"]
    args = [a for a in args if a != "logger.mode=disabled"]
    marker = tmp / "hang"
    first = Proc(
        "train_kd.py",
        args,
        logs=tmp / "first",
        env={"IKL_TEST_HANG_AFTER_STEP": "6", "IKL_TEST_HANG_MARKER": str(marker)},
        hooked=True,
    )
    first.wait_for(marker.exists, "step 6")
    time.sleep(0.5)
    first.kill()
    final = Proc("train_kd.py", [*args, "resume=true"], logs=tmp / "final")
    return {"code": final.finish(), "stderr": final.stderr, "run": run}


@pytest.mark.jobs("wandb-kill")
def test_wandb_holds_every_step_of_metrics_jsonl_after_a_sigkill(jobs):
    result = jobs.get("wandb-kill")
    assert result["code"] == 0, result["stderr"][-3000:]
    run = result["run"]
    steps = {json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    attempts = sorted(run.glob("wandb/offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    assert len(attempts) == 2
    logged = {row["_step"] for row in history_rows(attempts[-1]) if "_step" in row}
    assert steps <= logged, sorted(steps - logged)
    REPORT.add(
        "integrity",
        "8. W&B after SIGKILL",
        "SIGKILL at step 6 (logger.mode=offline), then resume=true to the end",
        f"the resumed attempt's W&B file holds all {len(steps)} steps of metrics.jsonl",
        "no step missing",
    )
