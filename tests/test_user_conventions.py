"""Habits of PyTorch / Hydra / W&B users that the entry points must honour (issue: the first hour).

W&B's environment variables, tqdm's own rule for the progress bar, the auto-trained teacher as a
run of its own (no student override leaks into it), a missing teacher named before any download,
and messages that mention only what the user passed.
"""

from __future__ import annotations

import json

import pytest
import torch

from ikl.cli import train_kd
from ikl.engine import trainer as trainer_module
from ikl.engine.sink import MetricSink, resolve_wandb_mode
from tests.reliability.helpers import cli
from tests.runutils import TINY_DIGITS, compose_config


# ------------------------------------------------------------------------------------------- W&B
@pytest.mark.parametrize(
    ("env", "override", "expected"),
    [
        ({}, None, "offline"),  # no WANDB_MODE: offline, the safe default
        ({"WANDB_MODE": "disabled"}, None, "disabled"),  # the environment decides ...
        ({"WANDB_MODE": "online"}, None, "online"),
        ({"WANDB_MODE": "dryrun"}, None, "offline"),  # W&B's old name for offline
        ({"WANDB_MODE": "offline"}, "logger.mode=disabled", "disabled"),  # ... unless the command line does
        ({"WANDB_MODE": "disabled"}, "logger.mode=offline", "offline"),
    ],
)
def test_wandb_mode_defers_to_the_environment_and_the_command_line_wins(monkeypatch, env, override, expected):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cfg = compose_config("train_kd", [override] if override else [])
    assert resolve_wandb_mode(cfg.logger.mode) == expected


def test_wandb_project_entity_and_dir_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    cfg = compose_config("train_kd", [])
    assert (cfg.logger.project, cfg.logger.entity) == ("my-project", "my-team")
    assert compose_config("train_kd", ["logger.project=cli-project"]).logger.project == "cli-project"
    monkeypatch.delenv("WANDB_ENTITY")
    assert compose_config("train_kd", []).logger.entity is None

    seen = {}

    class FakeRun:
        id, dir, starting_step = "abc", str(tmp_path / "w" / "wandb" / "run"), 0

        def log(self, *a, **k):
            pass

        def finish(self, **k):
            pass

    import wandb

    monkeypatch.setattr(wandb, "init", lambda **kw: seen.update(kw) or FakeRun())
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    MetricSink(tmp_path / "run", mode="offline").close()
    assert seen["dir"] == str(tmp_path / "w")
    monkeypatch.delenv("WANDB_DIR")
    MetricSink(tmp_path / "run2", mode="offline").close()
    assert seen["dir"] == str(tmp_path / "run2")


def test_resume_replays_what_wandb_may_lack(monkeypatch, tmp_path):
    logged = []

    class FakeRun:
        id, dir = "abc", str(tmp_path / "wandb" / "run")

        def __init__(self, start):
            self.starting_step = start

        def log(self, row, step):
            logged.append(step)

        def finish(self, **k):
            pass

    records = [{"epoch": e, "step": s, "train/loss_step": 1.0} for e, s in ((1, 1), (1, 2), (2, 3), (2, 4))]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    import wandb

    for start, replayed in ((0, [1, 2, 3]), (3, [3])):  # offline: a new file; online: from the resumed step
        logged.clear()
        monkeypatch.setattr(wandb, "init", lambda start=start, **kw: FakeRun(start))
        sink = MetricSink(tmp_path, mode="offline", run_id="abc")
        sink.truncate_after(epoch=2, step=3)  # the checkpoint: step 3 done
        assert logged == replayed
        sink.close()
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# --------------------------------------------------------------------------------------- progress
def test_the_progress_bar_follows_tqdms_rule(monkeypatch, tmp_path, teacher_file):
    seen = []
    real = trainer_module.tqdm
    monkeypatch.setattr(trainer_module, "tqdm", lambda *a, **kw: seen.append(kw.get("disable")) or real(*a, **kw))
    base = [*TINY_DIGITS, "student=resnet8", "teacher=resnet8", f"teacher.checkpoint={teacher_file}"]
    base = [o for o in base if not o.startswith("trainer.progress")] + ["trainer.epochs=1"]
    train_kd.run(compose_config("train_kd", [*base, f"run_dir={tmp_path / 'a'}"]))
    train_kd.run(compose_config("train_kd", [*base, f"run_dir={tmp_path / 'b'}", "trainer.progress=false"]))
    assert seen == [None, True]  # None: tqdm decides (a bar on a terminal, none in a log file); false: never


# ---------------------------------------------------------------------------------------- teacher
@pytest.mark.slow
def test_the_auto_trained_teacher_takes_no_student_override(tmp_path, monkeypatch):
    calls = []
    real_run = train_kd.run

    def spy(cfg):
        calls.append(cfg)
        return real_run(cfg)

    monkeypatch.setattr(train_kd, "run", spy)
    overrides = [
        *TINY_DIGITS,
        "student=resnet8",
        "teacher=resnet8",
        "teacher.auto_train_epochs=2",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "trainer.stop_after=1",
        "trainer.epochs=3",
        "seed=1",
        "optimizer.lr=0.05",
        f"run_dir={tmp_path / 'student'}",
        f"out_dir={tmp_path}",
    ]
    summary = train_kd.run(compose_config("train_kd", overrides))
    assert summary["epochs"] == 1 and summary["teacher_acc"] is not None
    student_cfg, teacher_cfg = calls  # the student run, then the teacher run it starts
    assert teacher_cfg.trainer.epochs == 2 and teacher_cfg.trainer.stop_after is None
    assert teacher_cfg.seed == 0 and teacher_cfg.optimizer.lr == 0.1  # the digits recipe, not the student's
    assert teacher_cfg.dataset.builder.max_train_samples == 64  # the student's data
    (final,) = (tmp_path / "cache").glob("*/checkpoints/final.pt")
    assert torch.load(final, weights_only=True)["epoch"] == 2


def test_a_missing_teacher_is_named_before_any_download(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", lambda *a, **k: pytest.fail("downloaded"))
    code, stderr = cli(
        "train_kd.py",
        [
            "dataset=cifar100",
            f"dataset.builder.root={tmp_path / 'data'}",
            "teacher=resnet32x4",
            "student=resnet8x4",
            f"teacher.checkpoint={tmp_path / 'ckpt_epoch_240.pth'}",
            f"run_dir={tmp_path / 'run'}",
        ],
    )
    assert code == 2 and "teacher.checkpoint=" in stderr and "does not exist" in stderr
    assert "scripts/get_teachers.sh" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_teacher_pretraining_mentions_nothing_the_user_did_not_pass(tmp_path, capsys):
    overrides = [
        *TINY_DIGITS,
        "student=resnet8",
        "teacher=resnet8",
        "teacher.auto_train_epochs=1",
        f"teacher.cache_dir={tmp_path / 'cache'}",
        "trainer.epochs=1",
        f"run_dir={tmp_path / 'student'}",
    ]
    train_kd.run(compose_config("train_kd", overrides))
    out = capsys.readouterr().out
    assert out.count("run summary") == 1, out
    assert ": None" not in out and "resume" not in out, out
