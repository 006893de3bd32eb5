"""Knowledge distillation (IKL-KD and baselines): compose the config, build, hand to ikl.engine.

python train_kd.py                                   # digits, IKL-KD, CPU, a few minutes
python train_kd.py loss=kd,dkd,ikl -m                # a sweep
torchrun --nproc_per_node=8 train_kd.py experiment=kd_imagenet/ikl_res34_res18
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ikl.cli import compose
from ikl.cli.overrides import check_command_line
from ikl.cli.paths import CONFIGS
from ikl.engine.checkpoint import load_model_weights
from ikl.engine.trainer import evaluate_classifier
from ikl.errors import CheckpointError, ConfigError, UserError
from ikl.models import create_model
from ikl.tasks import DistillationTask

log = logging.getLogger("ikl.train_kd")


def teacher_run_config(cfg: DictConfig, cache_path: Path) -> DictConfig:
    """The config that trains the missing bundled-data teacher with plain CE, into the cache."""
    teacher_cfg = cfg.copy()
    with open_dict(teacher_cfg):
        teacher_cfg.loss = OmegaConf.load(CONFIGS / "loss" / "ce.yaml")
        teacher_cfg.student = OmegaConf.create({"name": cfg.teacher.name})
        teacher_cfg.trainer.epochs = cfg.teacher.auto_train_epochs
        teacher_cfg.scheduler.milestones = [round(cfg.teacher.auto_train_epochs * f) for f in (0.6, 0.85)]
        teacher_cfg.run_dir = str(cache_path.with_suffix(""))
        teacher_cfg.resume = True
        teacher_cfg.logger.mode = "disabled"
        teacher_cfg.run_name = f"teacher-{cfg.dataset.name}-{cfg.teacher.name}-s{cfg.seed}"
        teacher_cfg.cell = None  # not a run of the parent's paper cell
    return teacher_cfg


def teacher_checkpoint(cfg: DictConfig) -> Path:
    """The teacher file to load: the configured one, or (bundled data) a cached one trained on demand."""
    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint)
    if not cfg.teacher.auto_train_epochs:
        raise ConfigError(
            f"no teacher checkpoint for {cfg.teacher.name} on {cfg.dataset.name}: set teacher.checkpoint=<file> "
            f"(scripts/get_teachers.sh fetches the published CIFAR-100 teachers) or train one with "
            f"`python train_kd.py loss=ce student={cfg.teacher.name} dataset={cfg.dataset.name}`"
        )
    # everything that changes the cached teacher is in its name, so a smoke teacher is never reused
    subset = cfg.dataset.builder.get("max_train_samples") or "all"
    key = f"{cfg.dataset.name}-{cfg.teacher.name}-e{cfg.teacher.auto_train_epochs}-n{subset}-s{cfg.seed}"
    cache = Path(cfg.teacher.cache_dir) / f"{key}.pt"
    final = cache.with_suffix("") / "checkpoints" / "final.pt"
    if not final.is_file():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(
                f"the {cfg.teacher.name} teacher is not trained yet; run train_kd.py once without torchrun to train and cache it"
            )
        log.info(
            "no cached %s teacher for %s: training one first (%d epochs)",
            cfg.teacher.name,
            cfg.dataset.name,
            cfg.teacher.auto_train_epochs,
        )
        run(teacher_run_config(cfg, cache))
    return final


def build_teacher(cfg: DictConfig, num_classes: int, path: Path):
    model = create_model(cfg.teacher.name, num_classes)
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
    touched: a bad teacher file with ``resume=true`` leaves config.yaml, checkpoints and metrics as they were.

    It is built for ``dataset.num_classes`` (``compose.build_data`` checks that against the data once the
    session is open); when the file does not fit, a wrong ``dataset.num_classes`` is the mistake to name.
    """
    path = teacher_checkpoint(cfg)
    try:
        return build_teacher(cfg, cfg.dataset.num_classes, path)
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
    """Train one student (or, with loss=ce, one network) and return the run summary."""
    compose.validate(cfg)
    distilling = cfg.loss.criterion is not None
    teacher = load_teacher(cfg) if distilling else None  # every teacher check before anything is written
    session = compose.start_session(cfg)
    failed = True
    try:
        data = compose.build_data(cfg, session)
        datasets, _, test_loader = data
        student = create_model(cfg.student.name, datasets.num_classes)
        criterion = instantiate(cfg.loss.criterion) if distilling else None
        task = DistillationTask(
            student, teacher, criterion, ce_weight=cfg.loss.ce_weight, warmup_epochs=cfg.loss.warmup_epochs
        )
        task.to(session.device)
        if teacher is not None:
            task.teacher = compose.prepare_teacher(task.teacher, cfg)
        teacher_acc = None
        if teacher is not None:
            teacher_acc = evaluate_classifier(teacher, test_loader, session.device)["acc"]
            log.info("teacher %s test accuracy: %.2f%%", cfg.teacher.name, teacher_acc)
            check_teacher(cfg, teacher_acc)
            if session.resume_state is None:  # a resumed run has it in its metrics already
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
        compose.report(summary, session)
        failed = False
        return summary
    finally:
        session.close(failed)


@hydra.main(config_path=str(CONFIGS), config_name="train_kd", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    compose.cli(run)(cfg)


def main() -> None:
    """Console script ``ikl-train-kd``: the command line checked first, then Hydra."""
    check_command_line("train_kd")
    hydra_main()
