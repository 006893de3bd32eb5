"""Knowledge distillation (IKL-KD and baselines): compose the config, build, hand to ikl.engine.

python train_kd.py                                   # digits, IKL-KD, CPU, a few minutes
python train_kd.py loss=kd,dkd,ikl -m                # a sweep
torchrun --nproc_per_node=8 train_kd.py experiment=kd_imagenet/ikl_res34_res18
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ikl.cli import compose, rundir
from ikl.cli.models import build_model, task_options, weights_come_with_model
from ikl.cli.overrides import check_command_line
from ikl.cli.paths import CONFIGS
from ikl.engine.checkpoint import load_model_weights
from ikl.engine.trainer import evaluate_classifier
from ikl.errors import CheckpointError, ConfigError, UserError
from ikl.tasks import DistillationTask

log = logging.getLogger("ikl.train_kd")


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """A config composed from the configs (Hydra's compose API), inside or outside a running app."""
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name=config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def _dataset_choice(cfg: DictConfig) -> str:
    try:
        return HydraConfig.get().runtime.choices["dataset"]
    except (ValueError, KeyError):  # not under Hydra: our dataset configs are named after the data set
        return str(cfg.dataset.name)


TEACHER_PLACEMENT = ("device", "workers", "threads", "progress", "log_every")


def teacher_run_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The run that trains the missing bundled-data teacher: its own recipe, not the student's.

    Composed afresh (``loss=ce``, ``student=<teacher>``, the data set's recipe), so no student
    override leaks into it (``trainer.epochs``, ``stop_after``, the optimizer, ...); only the data
    (the whole ``dataset`` section) and where it runs (device, workers, threads, progress) are
    the student's.
    """
    teacher = cfg.teacher
    epochs = int(teacher.auto_train_epochs)
    teacher_cfg = compose_config(
        "train_kd", [f"dataset={_dataset_choice(cfg)}", "loss=ce", f"student={teacher.name}", f"seed={teacher.seed}"]
    )
    with open_dict(teacher_cfg):
        teacher_cfg.dataset = cfg.dataset.copy()
        for key in TEACHER_PLACEMENT:
            teacher_cfg.trainer[key] = cfg.trainer.get(key)
        teacher_cfg.trainer.epochs = epochs
        teacher_cfg.trainer.stop_after = None
        if "milestones" in teacher_cfg.scheduler:
            teacher_cfg.scheduler.milestones = [max(1, round(epochs * f)) for f in (0.6, 0.85)]
        teacher_cfg.run_dir = str(run_dir)
        teacher_cfg.out_dir = str(run_dir.parent)
        teacher_cfg.resume = True
        teacher_cfg.quiet = True  # its plan notes and summary would name options the user never gave
        teacher_cfg.logger = OmegaConf.load(CONFIGS / "logger" / "disabled.yaml")
        teacher_cfg.run_name = f"teacher-{cfg.dataset.name}-{teacher.name}"
        teacher_cfg.cell = None  # not a run of the student's paper cell
    return teacher_cfg


def teacher_cache_dir(cfg: DictConfig) -> Path:
    """Where the auto-trained teacher of this data set lives: keyed by everything that changes it."""
    data = {k: v for k, v in compose.plain(cfg.dataset).items() if k != "builder"}
    data["builder"] = {k: v for k, v in cfg.dataset.builder.items() if k not in ("root", "download")}
    digest = hashlib.sha256(
        json.dumps(OmegaConf.to_container(OmegaConf.create(data), resolve=True), sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    key = f"{cfg.dataset.name}-{cfg.teacher.name}-e{cfg.teacher.auto_train_epochs}-s{cfg.teacher.seed}-{digest}"
    return Path(cfg.teacher.cache_dir) / key


def missing_teacher(cfg: DictConfig, path: Path | None) -> ConfigError:
    where = f"teacher.checkpoint={path} does not exist" if path else f"no teacher checkpoint for {cfg.teacher.name}"
    return ConfigError(
        f"{where} ({cfg.dataset.name}): scripts/get_teachers.sh fetches the published CIFAR-100 teachers into "
        f"download_ckpts/; or train one with `python train_kd.py loss=ce student={cfg.teacher.name} dataset={cfg.dataset.name}`"
    )


def teacher_checkpoint(cfg: DictConfig) -> Path:
    """The teacher file to load: the configured one, or (bundled data) a cached one trained on demand."""
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint)
        if path.is_dir():
            raise ConfigError(
                f"teacher.checkpoint={path} is a directory, not a checkpoint file; give the .pth/.pt file"
            )
        if not path.is_file():
            raise missing_teacher(cfg, path)
        return path
    if not cfg.teacher.auto_train_epochs:
        raise missing_teacher(cfg, None)
    run_dir = teacher_cache_dir(cfg)
    final = run_dir / "checkpoints" / "final.pt"
    if not final.is_file():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                f"the {cfg.teacher.name} teacher is not trained yet; run train_kd.py once without torchrun to train and cache it"
            )
        log.info(
            "no cached %s teacher for %s: training one first (%d epochs, its own recipe) in %s",
            cfg.teacher.name,
            cfg.dataset.name,
            cfg.teacher.auto_train_epochs,
            run_dir,
        )
        summary = run(teacher_run_config(cfg, run_dir))
        log.info("teacher %s trained: test accuracy %.2f%%", cfg.teacher.name, summary["acc_last"])
        if not final.is_file():
            raise ConfigError(f"the teacher run in {run_dir} ended without {final}; remove that folder and run again")
    return final


def build_teacher(cfg: DictConfig, num_classes: int, path: Path):
    model = build_model(cfg.teacher, num_classes, "teacher")
    container = load_model_weights(model, path, what="teacher")
    log.info(
        "teacher %s loaded from %s (stored accuracy: %s)",
        cfg.teacher.name,
        path,
        container.get("accuracy", container.get("test/acc", "n/a")),
    )
    return model


def load_teacher(cfg: DictConfig):
    """The teacher, trained and cached first if it must be, loaded and verified before the run dir is
    touched (and before any data set is downloaded). Returns (model, file).

    It is built for ``dataset.num_classes``; when the file does not fit, a wrong
    ``dataset.num_classes`` is the mistake to name.
    """
    if weights_come_with_model(cfg.teacher):  # e.g. a timm teacher with pretrained weights
        return build_model(cfg.teacher, cfg.dataset.num_classes, "teacher"), None
    path = teacher_checkpoint(cfg)
    try:
        return build_teacher(cfg, cfg.dataset.num_classes, path), path
    except CheckpointError:
        compose.load_datasets(cfg)  # a wrong dataset.num_classes is the mistake to name
        raise


def check_teacher(cfg: DictConfig, accuracy: float) -> None:
    expected = cfg.teacher.expected_acc
    if expected is not None and abs(accuracy - expected) > cfg.teacher.acc_tolerance:
        raise UserError(
            f"teacher {cfg.teacher.name} scores {accuracy:.2f}% on the test set, expected {expected}±{cfg.teacher.acc_tolerance}; "
            "wrong checkpoint, class order or input normalisation? Check teacher.checkpoint and dataset.builder.normalize"
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one student (or, with loss=ce, one network) and return the run summary.

    Every check (config, teacher file, the teacher's test accuracy, data, the resume identity) runs
    before the run dir is written: a refused start or resume leaves every file as it was.
    """
    config = compose.validate(cfg)
    distilling = cfg.loss.criterion is not None
    teacher, _ = load_teacher(cfg) if distilling else (None, None)
    extra = {"teacher.state_sha256": rundir.state_sha256(teacher)} if teacher is not None else {}
    start = compose.prepare(cfg, config, task="kd", extra=extra)
    data = compose.build_data(cfg, start)
    datasets, _, test_loader = data
    student = build_model(cfg.student, datasets.num_classes, "student")
    if start.resume_state is None:
        compose.initialise_from(student, cfg)
    criterion = instantiate(cfg.loss.criterion) if distilling else None
    task = DistillationTask(
        student,
        teacher,
        criterion,
        ce_weight=cfg.loss.ce_weight,
        warmup_epochs=cfg.loss.warmup_epochs,
        **task_options(cfg),
    )
    task.to(start.device)
    teacher_acc = None
    if teacher is not None:
        task.teacher = compose.prepare_teacher(task.teacher, cfg)
        teacher_acc = evaluate_classifier(task.teacher, test_loader, start.device)["acc"]
        log.info("teacher %s test accuracy: %.2f%%", cfg.teacher.name, teacher_acc)
        check_teacher(cfg, teacher_acc)
    session = compose.open_session(start, entry="train_kd")
    failed = True
    try:
        if teacher is not None and session.resume_state is None:  # a resumed run has it in its metrics already
            session.sink.log({"teacher/acc": teacher_acc}, step=0, epoch=0)
        summary = compose.fit(cfg, session, task, data, model_name=cfg.student.name, monitor={"best": "test/acc"})
        summary.update(teacher_acc=teacher_acc, student=cfg.student.name)
        summary.update(
            teacher=cfg.teacher.name if distilling else None,
            loss=cfg.loss.name,
            dataset=cfg.dataset.name,
            seed=cfg.seed,
        )
        session.sink.summarize(summary)
        failed = False
    finally:
        session.close(failed)
    if not cfg.get("quiet"):
        compose.report(summary, session.dist)
    return summary


@hydra.main(config_path=str(CONFIGS), config_name="train_kd", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    compose.cli(run)(cfg)


def main() -> None:
    """Console script ``ikl-train-kd``: the command line checked first, then Hydra."""
    check_command_line("train_kd")
    hydra_main()
