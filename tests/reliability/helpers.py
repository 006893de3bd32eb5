"""Machinery of the reliability suite: runs of the real entry points (as subprocesses that a test can
kill at a chosen point, or in-process through the real Hydra command line), state comparison, and
the configurations every test shares.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.global_hydra import GlobalHydra

from ikl.engine.checkpoint import load_checkpoint
from tests.runutils import ROOT, TINY_DIGITS

HOOKED = Path(__file__).with_name("hooked.py")
# The environment children start from, taken before any test could set a variable (jobs start
# children from other threads while a test may be monkeypatching os.environ).
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("IKL_TEST_")}
# One thread per run: the suite runs two or three processes at once on a 2-core machine, and every
# run it compares uses the same setting (bit-identity holds for a fixed thread count).
ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HYDRA_FULL_ERROR": "0",
}
IGNORED_METRICS = ("time/", "train/images_per_s")


@dataclass
class Job:
    fn: Callable[[Path, dict], Any]  # (its own temporary dir, shared files) -> what the tests check
    priority: int = 9  # lower starts first: the longest jobs
    prepare: Callable[[dict], None] | None = None  # main-thread set-up before any job starts


JOBS: dict[str, Job] = {}


def job(name: str, *, priority: int = 9, prepare: Callable[[dict], None] | None = None) -> Callable:
    """Register ``fn(tmp, shared)`` as the background job ``name`` (see ``conftest.py``)."""

    def register(fn: Callable) -> Callable:
        JOBS[name] = Job(fn, priority, prepare)
        return fn

    return register


def kd_overrides(teacher: Path) -> list[str]:
    """train_kd on 64 digits (4 steps of 16 per epoch), 2 epochs, IKL with GI (a class prior)."""
    return [
        *TINY_DIGITS,
        "trainer.epochs=2",
        "trainer.log_every=1",
        "teacher=resnet8",
        "student=resnet8",
        f"teacher.checkpoint={teacher}",
        "loss=ikl_gi",
    ]


AT_OVERRIDES = [
    *TINY_DIGITS,
    "trainer.epochs=2",
    "trainer.log_every=1",
    "model=resnet8",
    "monitor.samples=16",
    "monitor.steps=2",
    "compare_to_ce=false",
    "awp.warmup_epoch=1",
    "ema.iter_start=0.5",
]


def isolated(tmp: Path) -> list[str]:
    """Keep Hydra's own files and ``resume=true``'s search for earlier runs inside ``tmp``."""
    return [f"hydra.run.dir={tmp / 'hydra'}", f"out_dir={tmp / 'outputs'}"]


class Proc:
    """An entry point in a subprocess (stdout/stderr to files), to be waited on or killed."""

    def __init__(
        self, script: str, overrides: list[str], *, logs: Path, env: Mapping[str, str] | None = None, hooked=False
    ) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = logs / "stdout.txt", logs / "stderr.txt"
        cmd = [sys.executable, *([str(HOOKED), script] if hooked else [str(ROOT / script)]), *overrides]
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.popen = subprocess.Popen(cmd, cwd=ROOT, env={**BASE_ENV, **ENV, **(env or {})}, stdout=out, stderr=err)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 600) -> None:
        """Poll ``condition`` every 20 ms until it holds; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"the run ended (exit {self.popen.returncode}) before {what}:\n{self.stderr[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or saved."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=60)
        assert self.popen.returncode == -signal.SIGKILL

    def finish(self, timeout: float = 900) -> int:
        return self.popen.wait(timeout=timeout)


def run(script: str, overrides: list[str], *, logs: Path, env: Mapping[str, str] | None = None) -> Proc:
    """Run to the end; assert success."""
    proc = Proc(script, overrides, logs=logs, env=env)
    code = proc.finish()
    assert code == 0, f"{script} exited {code}:\n{proc.stderr[-3000:]}"
    return proc


def cli(script: str, args: list[str]) -> tuple[int, str]:
    """``python <script> <args>`` in this process (the real Hydra command line, no interpreter
    start-up): (exit code, stderr). Hydra keeps its own logging and files out of the way."""
    argv = sys.argv
    err = io.StringIO()
    sys.argv = [str(ROOT / script), *args, "hydra/job_logging=none", "hydra/hydra_logging=none"]
    GlobalHydra.instance().clear()
    code: Any = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exc:
        code = exc.code if exc.code is not None else 0
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    # what a real interpreter would also print to stderr (its default filters hide these categories)
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    shown = [w for w in caught if not issubclass(w.category, hidden)]
    printed = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in shown)
    return int(code), printed + err.getvalue()


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[0] if lines else ""


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings (the only values that may differ between identical runs)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        out.append({k: v for k, v in json.loads(line).items() if not k.startswith(IGNORED_METRICS)})
    return out


def assert_same(a: Any, b: Any, where: str = "") -> int:
    """Assert ``a`` and ``b`` are bit-identical (tensors, numbers, containers); returns the tensor count."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
        return 1
    if isinstance(a, Mapping):
        keys = {k for k in a if not str(k).startswith(IGNORED_METRICS) and k != "wandb_run_id"}
        other = {k for k in b if not str(k).startswith(IGNORED_METRICS) and k != "wandb_run_id"}
        assert keys == other, f"{where}: keys {sorted(map(str, keys ^ other))} in only one"
        return sum(assert_same(a[k], b[k], f"{where}.{k}") for k in keys)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        return sum(assert_same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True)))
    assert a == b, f"{where}: {a!r} vs {b!r}"
    return 0


def compare_runs(a: Path, b: Path) -> dict[str, int]:
    """Every checkpoint (weights, optimizer, scheduler, RNG, class prior, EMA) and every metric record
    (timings aside) of run dirs ``a`` and ``b`` are identical; returns what was compared."""
    names = sorted(p.name for p in (a / "checkpoints").glob("*.pt"))
    assert names == sorted(p.name for p in (b / "checkpoints").glob("*.pt"))
    tensors = 0
    for name in names:
        tensors += assert_same(
            load_checkpoint(a / "checkpoints" / name), load_checkpoint(b / "checkpoints" / name), name
        )
    ra, rb = records(a), records(b)
    assert ra == rb, "metrics.jsonl differs"
    return {"files": len(names), "tensors": tensors, "records": len(ra)}


def last_epoch(run_dir: Path) -> int | None:
    """The epoch of ``checkpoints/last.pt`` (asserting it loads), or None when there is none."""
    path = run_dir / "checkpoints" / "last.pt"
    return int(load_checkpoint(path)["epoch"]) if path.is_file() else None


def _uninterrupted(script: str) -> Callable[[Path, dict], Path]:
    def run_once(tmp: Path, shared: dict) -> Path:
        common = kd_overrides(shared["teacher"]) if script == "train_kd.py" else AT_OVERRIDES
        run(script, [*common, *isolated(tmp), f"run_dir={tmp / 'run'}"], logs=tmp / "logs")
        return tmp / "run"

    return run_once


# Uninterrupted reference runs: the SIGTERM, SIGKILL and determinism tests compare against them.
for _script, _kind, _priority in (("train_kd.py", "kd", 3), ("train_at.py", "at", 1)):
    for _copy in (1, 2):
        job(f"{_kind}-uninterrupted-{_copy}", priority=_priority)(_uninterrupted(_script))
