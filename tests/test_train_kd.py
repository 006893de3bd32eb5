"""train_kd end to end on tiny data: every loss, frozen teacher, resume, DDP, W&B files, errors."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from ikl.cli import train_kd
from ikl.engine.checkpoint import load_checkpoint, load_model_weights
from ikl.errors import CheckpointError
from ikl.losses import IKLLoss
from ikl.models import create_model, list_models
from ikl.tasks import DistillationTask
from tests.runutils import TINY_DIGITS, compose_config, run_entry, save_teacher
from tests.wandb_reader import history_rows

LOSSES = ["ce", "kd", "dkd", "kl", "dkl", "ikl", "ikl_gi"]


def kd_overrides(tmp_path: Path, teacher_file: Path, *extra: str) -> list[str]:
    return [
        *TINY_DIGITS,
        "student=resnet8",
        "teacher=resnet8",
        f"teacher.checkpoint={teacher_file}",
        f"run_dir={tmp_path / 'run'}",
        "trainer.epochs=1",
        *extra,
    ]


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dataset", ["digits", "cifar10", "cifar100", "imagenet"])
def test_every_loss_and_dataset_composes(loss, dataset):
    cfg = compose_config("train_kd", [f"loss={loss}", f"dataset={dataset}"])
    assert cfg.loss.name == loss and cfg.dataset.name == dataset
    assert "${" not in json.dumps(train_kd.compose.plain(cfg))


@pytest.mark.parametrize("group", ["student", "teacher"])
def test_every_model_name_has_a_config(group):
    files = {p.stem: p for p in (Path(train_kd.CONFIGS) / group).glob("*.yaml")}
    timm_files = {stem for stem in files if stem.startswith("timm_")}  # timm models: name timm/<timm name>
    assert set(files) - timm_files == set(list_models())
    for name in sorted(set(files) - timm_files)[:3]:
        assert compose_config("train_kd", [f"{group}={name}"])[group].name == name
    for stem in timm_files:
        assert compose_config("train_kd", [f"{group}={stem}"])[group].name.startswith("timm/")


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_one_epoch_of_every_loss(tmp_path, teacher_file, loss):
    summary = train_kd.run(compose_config("train_kd", kd_overrides(tmp_path, teacher_file, f"loss={loss}")))
    assert summary["epochs"] == 1 and summary["acc_last"] is not None
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epoch_record = next(r for r in records if "test/acc" in r)
    if loss != "ce":
        assert summary["teacher_acc"] is not None
        assert any(k.startswith("train/loss_") and k != "train/loss_ce" for k in epoch_record)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "run" / "summary.json").is_file()


def test_teacher_is_frozen_and_not_in_the_optimizer():
    student, teacher = create_model("resnet8", 10), create_model("resnet8", 10)
    task = DistillationTask(student, teacher, IKLLoss(num_classes=10), ce_weight=1.0)
    task.train()
    assert not task.teacher.training and task.model.training
    assert all(not p.requires_grad for p in task.teacher.parameters())
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in task.teacher.parameters()}
    before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    out = task(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), epoch=1)
    out["loss"].backward()
    optimizer.step()
    assert all(p.grad is None for p in task.teacher.parameters())
    for key, value in task.teacher.state_dict().items():
        assert torch.equal(value, before[key]), f"teacher {key} changed (BN statistics must not update)"


def test_warmup_scales_the_distillation_terms():
    task = DistillationTask(
        create_model("resnet8", 10), create_model("resnet8", 10), IKLLoss(num_classes=10), warmup_epochs=4
    )
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    task.eval()
    out = task(x, y, epoch=1)
    distill = out["loss_wmse"] + out["loss_sce"]
    torch.testing.assert_close(out["loss"], out["loss_ce"] + 0.25 * distill)


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_resume_gives_identical_weights_and_prior(tmp_path, teacher_file):
    straight = train_kd.run(
        compose_config("train_kd", kd_overrides(tmp_path / "a", teacher_file, "loss=ikl_gi", "trainer.epochs=2"))
    )
    first = compose_config(
        "train_kd",
        kd_overrides(tmp_path / "b", teacher_file, "loss=ikl_gi", "trainer.epochs=2", "trainer.stop_after=1"),
    )
    train_kd.run(first)
    resumed = train_kd.run(
        compose_config(
            "train_kd", kd_overrides(tmp_path / "b", teacher_file, "loss=ikl_gi", "trainer.epochs=2", "resume=true")
        )
    )
    a, b = _weights(tmp_path / "a" / "run"), _weights(tmp_path / "b" / "run")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    prior_a, prior_b = a["task"]["criterion"]["prior.prior"], b["task"]["criterion"]["prior.prior"]
    assert torch.equal(prior_a, prior_b)
    assert not torch.allclose(prior_a, torch.full_like(prior_a, 0.1)), "the prior was rebuilt after epoch 1"
    assert straight["acc_last"] == resumed["acc_last"]
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()


def test_starting_over_an_existing_run_is_refused(tmp_path, teacher_file):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"precious")
    with pytest.raises(train_kd.ConfigError, match="not an ikl run directory"):  # no run.json: not ours
        train_kd.run(compose_config("train_kd", kd_overrides(tmp_path, teacher_file)))
    (tmp_path / "run" / "run.json").write_text(
        json.dumps({"format": "ikl-run", "identity": {"task": "kd", "settings": {}}})
    )
    with pytest.raises(train_kd.ConfigError, match="resume=true"):
        train_kd.run(compose_config("train_kd", kd_overrides(tmp_path, teacher_file)))
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == b"precious"


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path, teacher_file, free_port):
    # No augmentation: the prior then depends only on which images each epoch sees, not on crops.
    common = kd_overrides(tmp_path, teacher_file, "loss=ikl_gi", "trainer.device=cpu", "dataset.builder.augment=none")
    single = train_kd.run(compose_config("train_kd", [*common, f"run_dir={tmp_path / 'single'}"]))
    launcher = ["torchrun", "--nproc_per_node=2", f"--master_port={free_port}"]
    proc = run_entry("train_kd.py", [*common, f"run_dir={tmp_path / 'ddp'}"], launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert ddp["teacher_acc"] == pytest.approx(single["teacher_acc"], abs=1e-9)
    assert ddp["test_n_last"] == single["test_n_last"] == 48
    prior_single = _weights(tmp_path / "single")["task"]["criterion"]["prior.prior"]
    prior_ddp = _weights(tmp_path / "ddp")["task"]["criterion"]["prior.prior"]
    torch.testing.assert_close(prior_ddp, prior_single, rtol=1e-5, atol=1e-6)
    assert not any(k.startswith("module.") for k in _weights(tmp_path / "ddp")["model"])


@pytest.mark.slow
def test_wandb_offline_files_hold_the_logged_metrics(tmp_path, teacher_file):
    overrides = [o for o in kd_overrides(tmp_path, teacher_file) if not o.startswith("logger.")] + [
        "logger.mode=offline"
    ]
    summary = train_kd.run(compose_config("train_kd", overrides))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and summary["wandb_dir"]
    (events,) = runs[0].glob("run-*.wandb")
    rows = history_rows(events)
    epoch_rows = [r for r in rows if "test/acc" in r]
    assert len(epoch_rows) == 1 and "train/loss_wmse" in epoch_rows[0]
    assert epoch_rows[0]["test/acc"] == pytest.approx(summary["acc_last"])
    assert any(r.get("teacher/acc") == pytest.approx(summary["teacher_acc"]) for r in rows)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": exploit}, handle)
    torch.save({"model": exploit}, tmp_path / "evil_torch.pth")
    for bad in (path, tmp_path / "evil_torch.pth"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["mdistiller", "module", "bare"])
def test_published_teacher_layouts_load_strictly(tmp_path, layout):
    state = save_teacher(tmp_path / "t.pth", name="resnet8x4", num_classes=100, layout=layout)
    model = create_model("resnet8x4", 100)
    load_model_weights(model, tmp_path / "t.pth", what="teacher")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


def test_a_teacher_for_another_class_count_is_one_clear_line(tmp_path):
    save_teacher(tmp_path / "t.pth", name="resnet8", num_classes=100)
    with pytest.raises(CheckpointError, match="does not fit the teacher") as info:
        load_model_weights(create_model("resnet8", 10), tmp_path / "t.pth", what="teacher")
    assert "fc.weight" in str(info.value) and "\n" not in str(info.value)


BAD_OVERRIDES = {
    "student=resnet9": "student",
    "loss=ikl loss.temperature=0": "loss.temperature",
    "loss=ikl loss.wmse_weight=-1": "loss.wmse_weight",
    "teacher.checkpoint=/nonexistent/teacher.pth": "/nonexistent/teacher.pth",
    "batch_size=0": "batch_size",
}


@pytest.mark.slow
@pytest.mark.parametrize("override,named", list(BAD_OVERRIDES.items()))
def test_bad_input_is_one_line_and_no_traceback(tmp_path, teacher_file, override, named):
    args = [*kd_overrides(tmp_path, teacher_file), *override.split()]
    proc = run_entry("train_kd.py", args, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert named in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    if "Could not" not in proc.stderr:  # Hydra's own listing of valid choices is several lines
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
