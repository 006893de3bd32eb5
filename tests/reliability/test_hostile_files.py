"""Corrupt and hostile files as a teacher, a resume checkpoint and an evaluated checkpoint.

Each is one clear line naming the file and the problem (exit 2, no traceback), nothing in the file
executes, and no run directory changes. The in-process cases go through the real command line
(``helpers.cli``); the code-executing pickle is also fed to real subprocesses.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from ikl.cli import train_kd
from ikl.engine.checkpoint import load_checkpoint, save_checkpoint
from tests.reliability.helpers import Proc, cli, isolated, job, kd_overrides, one_line
from tests.reliability.report import REPORT
from tests.runutils import compose_config, save_teacher

pytestmark = pytest.mark.slow

HTML = "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


class Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_hostile(folder: Path, marker: Path, good: Path) -> dict[str, Path]:
    """The bad variants of ``good``: truncated, an HTML page, and two code-executing pickles."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    (folder / "truncated.pth").write_bytes(raw[: len(raw) // 2])
    (folder / "page.pth").write_text(HTML)
    torch.save({"model": Exploit(marker), "epoch": 1}, folder / "exploit_torch.pth")
    with open(folder / "exploit_pickle.pth", "wb") as handle:
        pickle.dump({"model": Exploit(marker)}, handle)
    return {name: folder / f"{name}.pth" for name in ("truncated", "page", "exploit_torch", "exploit_pickle")}


PROBLEM = {
    "truncated": "damaged or truncated",
    "page": "HTML/XML page, not a checkpoint",
    "exploit_torch": "could run code",
    "exploit_pickle": "could run code",
    "arch": "does not fit",
    "classes": "does not fit",
    "resume_arch": "was trained with other settings: student.name: 'resnet14' -> 'resnet8'",
    "resume_classes": "holds resnet8 weights for 100 classes but its run builds resnet8 for 10 classes",
    "weights_only": "is not a training checkpoint",
}
LABEL = {
    "truncated": "truncated (first half of a real checkpoint)",
    "page": "HTML page saved as .pth (failed download)",
    "exploit_torch": "torch.save'd pickle whose __reduce__ runs `touch marker`",
    "exploit_pickle": "plain pickle whose __reduce__ runs `touch marker`",
    "arch": "resnet14 weights (another architecture)",
    "classes": "resnet8 weights for 100 classes",
    "resume_arch": "a resnet14 run's last.pt (another architecture)",
    "resume_classes": "a last.pt for 100 classes",
    "weights_only": "a weights-only file (a teacher) instead of last.pt",
}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a run dir, config.yaml and run.json included (a refusal writes nothing)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_files) -> dict[str, Path]:
    """A finished 1-epoch resnet8 run, and a resnet14 one (in-process)."""
    base = tmp_path_factory.mktemp("hostile-runs")
    out = {}
    for student in ("resnet8", "resnet14"):
        over = [*kd_overrides(shared_files["teacher"]), "trainer.epochs=1", f"student={student}"]
        train_kd.run(compose_config("train_kd", [*over, *isolated(base), f"run_dir={base / student}"]))
        out[student] = base / student
    return out


def _expect_one_line(code: int, stderr: str, path: Path, problem: str) -> str:
    line = one_line(stderr)
    assert code == 2, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert str(path) in line and problem in line, line
    return line


def test_bad_teacher_files(tmp_path, runs, shared_files):
    marker = tmp_path / "marker"
    files = write_hostile(tmp_path / "files", marker, shared_files["teacher"])
    files["arch"], files["classes"] = tmp_path / "files" / "arch.pth", tmp_path / "files" / "classes.pth"
    save_teacher(files["arch"], name="resnet14")
    save_teacher(files["classes"], num_classes=100)
    run_dir = tmp_path / "run"
    shutil.copytree(runs["resnet8"], run_dir)  # an existing run continued with a bad teacher
    before = snapshot(run_dir)
    for name, path in files.items():
        over = [*kd_overrides(path), "trainer.epochs=2", *isolated(tmp_path), f"run_dir={run_dir}", "resume=true"]
        code, stderr = cli("train_kd.py", over)
        line = _expect_one_line(code, stderr, path, PROBLEM[name])
        assert not marker.exists()
        assert snapshot(run_dir) == before
        REPORT.add(
            "files",
            LABEL[name],
            "teacher.checkpoint (train_kd.py)",
            code,
            line,
            "run dir's checkpoints and metrics byte-identical",
        )


def test_bad_resume_checkpoints(tmp_path, runs, shared_files):
    marker = tmp_path / "marker"
    good = runs["resnet8"] / "checkpoints" / "last.pt"
    files = write_hostile(tmp_path / "files", marker, good)
    files["resume_arch"] = runs["resnet14"] / "checkpoints" / "last.pt"
    state = load_checkpoint(good)
    wide = torch.nn.Linear(64, 100).state_dict()
    state["model"] = {**state["model"], "fc.weight": wide["weight"], "fc.bias": wide["bias"]}
    save_checkpoint({**state, "num_classes": 100}, tmp_path / "files" / "resume_classes.pth")
    files["resume_classes"] = tmp_path / "files" / "resume_classes.pth"
    files["weights_only"] = shared_files["teacher"]
    for name, source in files.items():
        run_dir = tmp_path / f"run-{name}"
        shutil.copytree(runs["resnet8"], run_dir)
        shutil.copyfile(source, run_dir / "checkpoints" / "last.pt")
        before = snapshot(run_dir)
        over = [*kd_overrides(shared_files["teacher"]), "trainer.epochs=2", *isolated(tmp_path)]
        code, stderr = cli("train_kd.py", [*over, f"run_dir={run_dir}", "resume=true"])
        line = _expect_one_line(code, stderr, run_dir / "checkpoints" / "last.pt", PROBLEM[name])
        assert not marker.exists()
        assert snapshot(run_dir) == before
        REPORT.add(
            "files",
            LABEL[name],
            "checkpoints/last.pt, resume=true (train_kd.py)",
            code,
            line,
            "run dir's checkpoints and metrics byte-identical",
        )


def _eval_args(checkpoint: Path, out: Path) -> list[str]:
    return [
        f"checkpoint={checkpoint}",
        "dataset=digits",
        "model=resnet8",
        "n_ex=8",
        "batch_size=8",
        "version=custom",
        "attacks=[apgd-ce]",
        f"output_dir={out}",
        "results_dir=null",
        "logger.mode=disabled",
        "device=cpu",
    ]


def test_bad_evaluation_checkpoints(tmp_path, runs):
    marker = tmp_path / "marker"
    files = write_hostile(tmp_path / "files", marker, runs["resnet8"] / "checkpoints" / "final.pt")
    files["arch"], files["classes"] = tmp_path / "files" / "arch.pth", tmp_path / "files" / "classes.pth"
    save_teacher(files["arch"], name="resnet14", layout="bare")
    save_teacher(files["classes"], num_classes=100, layout="bare")
    for name, path in files.items():
        out = tmp_path / f"eval-{name}"
        code, stderr = cli("eval_autoattack.py", _eval_args(path, out))
        line = _expect_one_line(code, stderr, path, PROBLEM[name])
        assert not marker.exists() and not out.exists()
        REPORT.add("files", LABEL[name], "checkpoint (eval_autoattack.py model=resnet8)", code, line, "nothing written")


@job("exploit-subprocesses", priority=5)
def exploit_subprocesses(tmp: Path, shared: dict) -> list[tuple[str, Path, int, str, bool]]:
    """The code-executing pickle through real interpreters: as a teacher, and to evaluate."""
    marker = tmp / "marker"
    evil = tmp / "exploit.pth"
    with open(evil, "wb") as handle:  # no torch.save here: jobs leave global state alone
        pickle.dump({"model": Exploit(marker)}, handle)
    teacher = Proc("train_kd.py", [*kd_overrides(evil), *isolated(tmp), f"run_dir={tmp / 'run'}"], logs=tmp / "kd")
    evaluate = Proc("eval_autoattack.py", _eval_args(evil, tmp / "eval"), logs=tmp / "eval-logs")
    out = []
    for what, proc in (
        ("teacher.checkpoint (train_kd.py subprocess)", teacher),
        ("checkpoint (eval_autoattack.py subprocess)", evaluate),
    ):
        out.append((what, evil, proc.finish(), proc.stderr, marker.exists()))
    return out


@pytest.mark.jobs("exploit-subprocesses")
def test_code_executing_pickle_in_real_processes(jobs):
    for what, path, code, stderr, executed in jobs.get("exploit-subprocesses"):
        assert not executed, "the pickle's code ran"
        line = _expect_one_line(code, stderr, path, "could run code")
        REPORT.add("files", LABEL["exploit_pickle"], what, code, line, "marker file absent")
