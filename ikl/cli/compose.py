"""The run session shared by the training entry points (``ikl.cli.train_kd``, ``ikl.cli.train_at``).

Nothing here computes: it turns a composed config into objects (``hydra.utils.instantiate``),
starts the run (seed, device, process group, run dir, metric sink) and hands over to
``ikl.engine``.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ikl.data import DataError, DeviceCIFARLoader, build_loaders
from ikl.engine.checkpoint import load_checkpoint
from ikl.engine.distributed import DistInfo, init_distributed, resolve_device, shutdown_distributed
from ikl.engine.graphs import capture_blocker
from ikl.engine.sink import MetricSink, write_json_atomic
from ikl.engine.trainer import Trainer, TrainSettings
from ikl.engine.validate import validate_config
from ikl.errors import CheckpointError, ConfigError, UserError
from ikl.tasks import DistillationTask
from ikl.tasks.at import AdversarialTask

log = logging.getLogger("ikl")
TASKS = {"kd": DistillationTask, "at": AdversarialTask}  # task_name -> the task each entry point trains


def _user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error inside ``exc`` (Hydra wraps constructor errors), if there is one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (UserError, DataError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def cli(run: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
    """Wrap ``run`` for a Hydra ``main``: a user mistake is one line on stderr and exit code 2."""

    @functools.wraps(run)
    def wrapper(cfg: DictConfig) -> dict:
        try:
            return run(cfg)
        except (UserError, DataError, InstantiationException) as exc:
            found = _user_error(exc)
            if found is None:
                raise
            sys.stderr.write(f"error: {found}\n")
            sys.exit(getattr(found, "exit_code", 2))

    return wrapper


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (no ``${...}`` left)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@dataclass
class Session:
    run_dir: Path
    device: torch.device
    dist: DistInfo
    sink: MetricSink
    resume_state: dict[str, Any] | None
    config: dict[str, Any]

    def close(self, failed: bool) -> None:
        self.sink.close(failed=failed)
        shutdown_distributed()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hydra_run_dir() -> Path | None:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not running under Hydra (tests use the compose API)
        return None


def latest_run_with_checkpoint(base: Path) -> Path | None:
    runs = sorted(p.parent.parent for p in base.glob("*/checkpoints/last.pt"))
    return runs[-1] if runs else None


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """(run dir, checkpoint to resume from). ``resume``: false, true (latest run of this name), a run dir
    or a checkpoint file inside one (``<run>/checkpoints/<name>.pt`` beside ``<run>/config.yaml``)."""
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else hydra_run_dir() or Path(cfg.out_dir) / cfg.run_name / "run"
    resume = cfg.get("resume", False)
    if resume in (False, None, "false"):
        existing = run_dir / "checkpoints" / "last.pt"
        if existing.is_file():
            raise ConfigError(
                f"{run_dir} already holds a checkpoint; continue it with resume=true or pick another run_dir"
            )
        return run_dir, None
    if resume is True or resume == "true":
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return run_dir, run_dir / "checkpoints" / "last.pt"
        # an explicit run_dir is the run to continue: never fall back to (and write into) another one
        previous = None if cfg.get("run_dir") else latest_run_with_checkpoint(Path(cfg.out_dir) / cfg.run_name)
        if previous is None:
            log.info("resume=true but no earlier run of %s has a checkpoint: starting fresh", cfg.run_name)
            return run_dir, None
        return previous, previous / "checkpoints" / "last.pt"
    target = Path(str(resume))
    if target.is_file():  # <run>/checkpoints/<name>.pt: a stray file must not make its grandparent a run dir
        run = target.absolute().parent.parent
        if target.absolute().parent.name != "checkpoints" or not (run / "config.yaml").is_file():
            raise ConfigError(
                f"resume={resume}: the file is not inside a run directory (<run>/checkpoints/last.pt beside "
                "<run>/config.yaml); pass the run directory (resume=<run dir>) or resume=true"
            )
        return run, target
    checkpoint = target / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        raise ConfigError(
            f"resume={resume}: no checkpoint at {checkpoint}; pass a run dir that has checkpoints/last.pt"
        )
    return checkpoint.parent.parent, checkpoint


def check_resume_state(state: dict[str, Any], path: Path, cfg: DictConfig) -> None:
    """Refuse, in one line, a resume checkpoint that is not a training state or is for another model."""
    if state.get("kind") != "train-state":
        raise CheckpointError(
            f"{path} is not a training checkpoint (no optimizer/task state); resume needs the "
            "checkpoints/last.pt that train_kd.py/train_at.py write"
        )
    section = cfg.get("student") or cfg.get("model")
    wanted = (section.get("name") if section is not None else None, cfg.dataset.num_classes)
    saved = (state.get("model_name"), state.get("num_classes"))
    if any(s is not None and w is not None and s != w for s, w in zip(saved, wanted, strict=True)):
        raise CheckpointError(
            f"{path} was written for {saved[0]} with {saved[1]} classes but this run builds {wanted[0]} with "
            f"{wanted[1]} classes; resume with the same model and dataset, or pick another run_dir"
        )


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Resolve and check every value before anything is built or trained (one line per mistake)."""
    try:
        config = plain(cfg)
    except Exception as exc:  # noqa: BLE001 - an unresolvable ${...} or a missing ??? value
        raise ConfigError(f"config does not resolve: {str(exc).splitlines()[0]}") from exc
    validate_config(config)
    return config


def start_session(cfg: DictConfig) -> Session:
    """Validate, seed, pick the device, join the process group, open the run dir and the sink."""
    config = validate(cfg)
    device_kind = (
        cfg.trainer.device if cfg.trainer.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dist_info = init_distributed(device_kind)
    device = resolve_device(device_kind, dist_info.local_rank)
    check_cuda_graphs(cfg, device, dist_info)
    run_dir, resume_from = resolve_run_dir(cfg)
    resume_state = load_checkpoint(resume_from, map_location=device) if resume_from else None
    if resume_state is not None:
        check_resume_state(resume_state, resume_from, cfg)
    seed_everything(int(cfg.seed) + dist_info.rank)
    if dist_info.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
        except OSError as exc:
            raise ConfigError(
                f"cannot write the run dir {run_dir}: {exc.strerror or exc}; choose a writable run_dir or out_dir"
            ) from exc
    sink = MetricSink(
        run_dir,
        enabled=dist_info.is_main,
        mode=cfg.logger.mode,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=cfg.run_name,
        group=cfg.logger.group or _sweep_group(),
        tags=list(cfg.logger.tags or []),
        config=config,
        run_id=(resume_state or {}).get("wandb_run_id"),
    )
    if resume_state is None:
        sink.discard_earlier_attempt()  # metrics of a killed attempt that left no checkpoint
    log.info("run dir: %s (device %s, world size %d)", run_dir, device, dist_info.world_size)
    return Session(run_dir, device, dist_info, sink, resume_state, config)


def check_cuda_graphs(cfg: DictConfig, device: torch.device, dist_info: DistInfo) -> None:
    """``trainer.cuda_graphs=true`` where it cannot work is one line before the run dir is written
    (the Trainer checks the built objects again with the same rules)."""
    if not cfg.get("trainer") or not cfg.trainer.get("cuda_graphs"):
        return
    task = TASKS.get(cfg.get("task_name"))
    why = capture_blocker(
        task=task.__name__ if task else str(cfg.get("task_name")),
        graph_safe=bool(task and task.graph_safe),
        amp=str(cfg.trainer.amp),
        distributed=dist_info.enabled,
        optimizer=str(cfg.optimizer.get("_target_", "?")).rsplit(".", 1)[-1],
        tensor_lr=False,
        device=device.type,
    )
    if why:
        raise ConfigError(f"trainer.cuda_graphs=true: {why}")


def _sweep_group() -> str | None:
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    if hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN":
        return Path(hydra_cfg.sweep.dir).name
    return None


def load_datasets(cfg: DictConfig):
    """The configured datasets, checked against ``dataset.num_classes``."""
    datasets = instantiate(cfg.dataset.builder)
    if datasets.num_classes != cfg.dataset.num_classes:
        raise ConfigError(
            f"dataset.num_classes={cfg.dataset.num_classes} but the data has {datasets.num_classes} classes; fix the dataset config"
        )
    return datasets


def build_data(cfg: DictConfig, session: Session):
    """Datasets and (train, test) loaders; ``trainer.loader=device`` keeps uint8 splits on the device."""
    datasets = load_datasets(cfg)
    dist_info = session.dist
    train_loader, test_loader = build_loaders(
        datasets,
        batch_size=cfg.batch_size,
        test_batch_size=cfg.test_batch_size,
        workers=cfg.trainer.workers,
        seed=cfg.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        pin_memory=session.device.type == "cuda",
    )
    loader = cfg.trainer.loader
    if loader == "auto":  # the device-resident loader where it pays: CUDA, in-memory uint8 data, one view
        loader = "device" if session.device.type == "cuda" and hasattr(datasets.train, "data") else "standard"
    if loader == "device":
        if datasets.two_view or not hasattr(datasets.train, "data"):
            log.info("trainer.loader=device does not support this data/augmentation: using the standard loader")
        else:
            train_loader = DeviceCIFARLoader.from_datasets(
                datasets,
                train=True,
                batch_size=cfg.batch_size,
                device=session.device,
                seed=cfg.seed,
                rank=dist_info.rank,
                world_size=dist_info.world_size,
                channels_last=cfg.trainer.channels_last,
            )
    elif loader != "standard":
        raise ConfigError(f"trainer.loader={loader!r} is not one of auto, standard, device")
    return datasets, train_loader, test_loader


def build_optimization(cfg: DictConfig, params) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = instantiate(cfg.optimizer)(params=params)
    scheduler = instantiate(cfg.scheduler)(optimizer)
    return optimizer, scheduler


def train_settings(cfg: DictConfig, device: torch.device, monitor: dict[str, str]) -> TrainSettings:
    t = cfg.trainer
    return TrainSettings(
        epochs=t.epochs,
        device=device,
        amp=str(t.amp),
        channels_last=t.channels_last,
        compile=t.compile,
        cuda_graphs=t.get("cuda_graphs", False),
        finite_check_every=t.get("finite_check_every", 0),
        grad_clip=t.grad_clip,
        log_every=t.log_every,
        save_every=t.save_every,
        monitor=monitor,
        stop_after=t.get("stop_after"),
        progress=t.progress and sys.stderr.isatty() or bool(os.environ.get("IKL_PROGRESS")),
    )


def weights_meta(model_name: str, num_classes: int, datasets) -> dict[str, Any]:
    """What a weights file must say to be loaded again: architecture, classes, input normalisation."""
    norm = {"mean": list(datasets.mean), "std": list(datasets.std)} if datasets.normalized else None
    return {
        "format": "ikl-checkpoint",
        "model_name": model_name,
        "num_classes": num_classes,
        "input_normalization": norm,
    }


def prepare_model(model: torch.nn.Module, cfg: DictConfig, session: Session) -> torch.nn.Module:
    """channels_last, torch.compile and DDP, in that order, as the trainer config asks."""
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        model = torch.compile(model)
    if session.dist.enabled:
        device_ids = [session.device.index] if session.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return model


def write_summary(summary: dict[str, Any], session: Session) -> None:
    """Rewrite ``summary.json`` after the sink has closed (e.g. with a baseline's numbers added)."""
    if session.dist.is_main:
        write_json_atomic(session.run_dir / "summary.json", summary)


def prepare_teacher(teacher: torch.nn.Module, cfg: DictConfig) -> torch.nn.Module:
    """The frozen teacher gets the same memory format and compilation as the student (never DDP)."""
    if cfg.trainer.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        teacher = torch.compile(teacher)
    return teacher


def report(summary: dict[str, Any], session: Session) -> None:
    """The final summary on stdout (rank 0): the entry point's one human-readable result."""
    if not session.dist.is_main:
        return
    width = max(len(k) for k in summary)
    lines = ["", "=" * 60, "run summary"] + [f"  {k:<{width}} : {_fmt(v)}" for k, v in summary.items()] + ["=" * 60]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def fit(cfg: DictConfig, session: Session, task, data, *, model_name: str, monitor: dict[str, str]) -> dict[str, Any]:
    """Wrap the model (channels_last/compile/DDP), build optimizer and schedule, continue a resumed
    run, train. ``data`` is ``(datasets, train_loader, test_loader)`` from :func:`build_data`."""
    datasets, train_loader, test_loader = data
    task.model = prepare_model(task.model, cfg, session)
    optimizer, scheduler = build_optimization(cfg, task.optimizer_param_groups())
    trainer = Trainer(
        task,
        optimizer,
        scheduler,
        train_loader,
        test_loader,
        train_settings(cfg, session.device, monitor),
        run_dir=session.run_dir,
        sink=session.sink,
        dist_info=session.dist,
        weights_meta=weights_meta(model_name, datasets.num_classes, datasets),
    )
    if session.resume_state is not None:
        trainer.restore(session.resume_state)
    return {**trainer.fit(), "wandb_dir": session.sink.wandb_dir}
