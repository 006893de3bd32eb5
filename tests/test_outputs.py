"""Runtime outputs never land in tracked paths: a smoke script run as a new user would (``SMOKE=1``,
no ``OUT``) from a checkout leaves ``git status`` clean and writes only into its own smoke folder.

The checkout is a copy of this one (its tracked and untracked-unignored files, committed into a
fresh repository), so the test sees this working tree's ``.gitignore`` and scripts and never writes
into the developer's own ``outputs/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.runutils import ROOT

SCRIPT = "kd_imagenet"  # the fastest smoke script that trains, caches a teacher and builds a table


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def copy_checkout(dest: Path) -> Path:
    """This working tree's files as a fresh one-commit repository at ``dest``."""
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():  # a file deleted in the working tree is still in the index
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy")
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("OUT", "IKL_CACHE", "PYTHONPATH", "TABLES_DIR", "PLOTS_DIR")
    }
    return {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def smoked(tmp_path_factory):
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout")
    repo = copy_checkout(tmp_path_factory.mktemp("checkout"))
    assert git(repo, "status", "--porcelain") == ""
    proc = subprocess.run(
        ["bash", f"scripts/{SCRIPT}.sh"],
        cwd=repo,
        env=clean_env(SMOKE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return repo


@pytest.mark.slow
def test_smoke_without_out_leaves_git_status_clean(smoked):
    assert git(smoked, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
def test_smoke_without_out_writes_into_its_own_folder_only(smoked):
    ignored = git(smoked, "status", "--porcelain", "--ignored", "--untracked-files=normal").splitlines()
    written = sorted(line[3:] for line in ignored if line.startswith("!! "))
    assert [w for w in written if "__pycache__" not in w] == ["outputs/"], written
    assert [p.name for p in (smoked / "outputs").iterdir()] == ["smoke"]  # not outputs/reproduce
    own = smoked / "outputs" / "smoke" / SCRIPT
    assert [p.name for p in own.parent.iterdir()] == [SCRIPT]
    assert (own / "runs" / "kd_imagenet-ikl_res34_res18-s0" / "summary.json").is_file()
    assert (own / "tables" / "table4_kd_imagenet.md").is_file()
    assert (own / "plots" / "curves_table4_kd_imagenet.png").is_file()
    assert any((own / "cache" / "teachers").iterdir()), "the smoke teacher is cached in the smoke folder"


@pytest.mark.slow
def test_real_runs_default_to_outputs_reproduce_and_tables_beside_them(smoked):
    show = 'source scripts/common.sh && printf "%s\\n" "$OUT" "$TABLES_DIR" "$PLOTS_DIR"'
    probe = smoked / "scripts" / "probe.sh"
    probe.write_text(show)
    try:
        for smoke, out in (("0", smoked / "outputs" / "reproduce"), ("1", smoked / "outputs" / "smoke" / "probe")):
            proc = subprocess.run(
                ["bash", str(probe)], cwd=smoked, env=clean_env(SMOKE=smoke), capture_output=True, text=True
            )
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == [str(out), str(out / "tables"), str(out / "plots")]
            assert git(smoked, "check-ignore", str(out / "tables" / "x.md")).strip()
            shutil.rmtree(out)
    finally:
        probe.unlink()
