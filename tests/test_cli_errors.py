"""User mistakes on the command line: one line on stderr, exit status 2, no traceback, nothing written.

Three defects: an unknown config-group option (Hydra printed several lines and exited 1, or silently
ignored an unknown ``experiment=``), ``resume=<file>`` outside a run dir (its grandparent was taken as
the run dir), and a bad teacher with ``resume=true`` (config.yaml was rewritten before the error).
Most cases run in-process through the real command line (``helpers.cli``); one per defect class runs
in a real interpreter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ikl.cli import overrides, rundir, train_kd
from ikl.cli.rundir import RunIdentity
from ikl.errors import ConfigError
from tests.reliability.helpers import cli
from tests.runutils import TINY_DIGITS, compose_config, run_entry, save_teacher


def kd_args(tmp: Path, teacher: Path, *extra: str) -> list[str]:
    """Tiny digits run, its files (and Hydra's) kept inside ``tmp``."""
    return [
        *TINY_DIGITS,
        "student=resnet8",
        "teacher=resnet8",
        f"teacher.checkpoint={teacher}",
        "trainer.epochs=1",
        f"run_dir={tmp / 'run'}",
        f"out_dir={tmp / 'outputs'}",
        f"hydra.run.dir={tmp / 'hydra'}",
        *extra,
    ]


def assert_one_line(code: int, stderr: str, *named: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert all(n in lines[0] for n in named), lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


# ------------------------------------------------------------------------- unknown group options
UNKNOWN = {
    "dataset=bogus": "'dataset/bogus'",
    "loss=nope": "'loss/nope'",
    "+recipe=bogus": "'recipe/bogus'",
    "++dataset=bogus": "'dataset/bogus'",
    "dataset@data=bogus": "'dataset/bogus'",
    "dataset=bogus.yaml": "'dataset/bogus.yaml'",
    "model/student=xyz": "'model/student'",
    "experiment=does/not/exist": "'experiment/does/not/exist'",
    "experiment=kd_cifar100": "'experiment/kd_cifar100'",  # a folder of configs, not a config
    "loss=ikl,nope": "'loss/nope'",  # multirun comma list: every item is checked
    "loss=choice(kd,nope)": "'loss/nope'",
    "loss=[ikl,nope]": "'loss/nope'",
}
KNOWN_OR_NOT_GROUPS = [
    "dataset=digits",
    "dataset=digits.yaml",
    "+recipe=kd_digits",
    "experiment=kd_cifar100/ikl_res56_res20",
    "loss=ikl,kd",
    "loss=choice(kd,dkd)",
    "loss=glob(*)",
    "~loss",
    "~experiment=nope",
    "dataset=null",
    "trainer.epochs=3",
    "dataset.root=/x",
    "seed=1,2",
    "hydra/job_logging=none",
    "hydra.run.dir=/x",
]


@pytest.mark.parametrize("override", list(UNKNOWN))
def test_an_unknown_group_option_is_one_line_naming_it(override):
    with pytest.raises(ConfigError) as info:
        overrides.check_overrides([override])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{override}: ") and UNKNOWN[override] in message
    assert "choose one of: " in message or "the groups are: " in message


def test_the_message_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        overrides.check_overrides(["dataset=bogus"])
    assert str(info.value).endswith(
        "; choose one of: cifar10, cifar100, cifar100_generated, cifar10_generated, digits, digits_generated, imagenet, imagenet_lt"
    )
    with pytest.raises(ConfigError, match=r"choose one of: at_ablation/<name>, at_cifar10/<name>"):
        overrides.check_overrides(["experiment=does/not/exist"])
    with pytest.raises(ConfigError, match=r"the groups are: dataset, .*student"):
        overrides.check_overrides(["model/student=xyz"])


@pytest.mark.parametrize("override", KNOWN_OR_NOT_GROUPS)
def test_known_options_and_other_overrides_are_left_to_hydra(override):
    overrides.check_overrides([override])


def test_hydra_flags_are_not_overrides_and_other_config_dirs_are_not_checked():
    assert overrides.command_line_overrides(["-m", "--cfg", "job", "loss=ikl,kd", "seed=1"]) == [
        "loss=ikl,kd",
        "seed=1",
    ]
    assert overrides.command_line_overrides(["--config-dir", "/elsewhere", "dataset=bogus"]) == []
    assert overrides.command_line_overrides(["--version"]) == []
    overrides.check_overrides(["hydra.searchpath=[file:///elsewhere]", "dataset=bogus"])


def test_check_command_line_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        overrides.check_command_line("train_kd", ["--multirun", "loss=ikl,nope", "trainer.epochs=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: loss=ikl,nope: Could not find 'loss/nope'")


@pytest.mark.parametrize(
    "script,override",
    [("train_at.py", "model=bogus"), ("eval_autoattack.py", "dataset=bogus"), ("train_kd.py", "experiment=nope")],
)
def test_every_entry_point_checks_before_hydra(script, override):
    # trainer.epochs=0 / n_ex=0 stop a run at once should the check not (Hydra ignores experiment=nope)
    stop = "n_ex=0" if script == "eval_autoattack.py" else "trainer.epochs=0"
    code, stderr = cli(script, [override, stop])
    assert_one_line(code, stderr, override)


@pytest.mark.slow
def test_a_real_interpreter_prints_one_line_and_exits_2(tmp_path):
    proc = run_entry("train_kd.py", ["-m", "loss=kd,nope", f"out_dir={tmp_path}", "trainer.epochs=0"], timeout=120)
    assert_one_line(proc.returncode, proc.stderr, "loss=kd,nope", "'loss/nope'")
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------- resume=<file>
IDENTITY = RunIdentity("kd", {"loss.name": "ikl"})


def plan(tmp_path: Path, resume: Path):
    return rundir.plan_run(
        identity=IDENTITY, resume=str(resume), run_dir=None, default_dir=tmp_path / "new", out_dir=tmp_path
    )


@pytest.mark.parametrize("where", ["stray/last.pt", "nocfg/checkpoints/last.pt"])
def test_resume_from_a_file_outside_a_run_dir_is_refused(tmp_path, where):
    stray = tmp_path / where
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not read")
    with pytest.raises(ConfigError, match="is not inside a run directory") as info:
        plan(tmp_path, stray)
    assert str(stray) in str(info.value) and "resume=true" in str(info.value) and "\n" not in str(info.value)


def test_resume_from_a_file_inside_a_run_dir_still_works(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"format": "ikl-run", "identity": IDENTITY.to_dict()}))
    (run / "checkpoints" / "epoch_1.pt").write_bytes(b"x")
    planned = plan(tmp_path, run / "checkpoints" / "epoch_1.pt")
    assert (planned.run_dir, planned.resume_from) == (run, run / "checkpoints" / "epoch_1.pt")


def test_resume_from_a_stray_file_on_the_command_line(tmp_path, teacher_file):
    stray = tmp_path / "downloads" / "last.pt"
    stray.parent.mkdir()
    stray.write_bytes(b"not read")
    code, stderr = cli("train_kd.py", kd_args(tmp_path, teacher_file, f"resume={stray}"))
    assert_one_line(code, stderr, f"resume={stray}", "not inside a run directory")
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a bad teacher with resume=true
@pytest.mark.slow
def test_a_bad_teacher_on_resume_leaves_every_file_of_the_run_as_it_was(tmp_path, teacher_file):
    code, stderr = cli("train_kd.py", kd_args(tmp_path, teacher_file))
    assert code == 0, stderr
    run = tmp_path / "run"
    before = snapshot(run)
    assert {"config.yaml", "checkpoints/last.pt", "metrics.jsonl"} <= set(before)

    truncated = tmp_path / "truncated.pth"
    data = teacher_file.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    proc = run_entry("train_kd.py", kd_args(tmp_path, truncated, "resume=true"), timeout=120)
    assert_one_line(proc.returncode, proc.stderr, str(truncated))
    assert snapshot(run) == before

    other_arch = tmp_path / "resnet14.pth"
    save_teacher(other_arch, name="resnet14")
    code, stderr = cli("train_kd.py", kd_args(tmp_path, other_arch, "resume=true"))
    assert_one_line(code, stderr, str(other_arch), "does not fit the teacher")
    assert snapshot(run) == before


def test_a_wrong_class_count_is_still_named_before_the_teacher(tmp_path, teacher_file):
    code, stderr = cli("train_kd.py", kd_args(tmp_path, teacher_file, "dataset.num_classes=100"))
    assert_one_line(code, stderr, "dataset.num_classes=100 but the data has 10 classes")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_missing_bundled_teacher_is_still_trained_and_cached_first(tmp_path):
    cfg = compose_config(
        "train_kd",
        [
            *(arg for arg in kd_args(tmp_path, Path("unused")) if not arg.startswith("hydra.")),
            "teacher.checkpoint=null",
            "teacher.auto_train_epochs=1",
            f"teacher.cache_dir={tmp_path / 'cache'}",
        ],
    )
    summary = train_kd.run(cfg)
    assert summary["teacher"] == "resnet8" and summary["teacher_acc"] is not None
    assert len(list((tmp_path / "cache").glob("*/checkpoints/final.pt"))) == 1
