"""The run session shared by the training entry points (``ikl.cli.train_kd``, ``ikl.cli.train_at``).

Nothing here computes: it turns a composed config into objects (``hydra.utils.instantiate``),
starts the run and hands over to ``ikl.engine``. A run starts in three steps, and nothing is
written into a run directory before the third:

1. :func:`validate`: every value's type and range, the optimizer and schedule (built once on a
   dummy parameter), the device, the run name.
2. :func:`prepare`: device and process group, the run's identity, where it goes and what it
   continues (:mod:`ikl.cli.rundir`), the resume checkpoint loaded and checked against the identity.
   The entry point then builds data, models and the teacher, and checks them.
3. :func:`open_session`: take the run dir's lock, write ``run.json`` and ``config.yaml``, open the
   log file and the metric sink.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ikl.cli import rundir, sweep
from ikl.cli.rundir import ClaimedRun, RunIdentity, RunPlan
from ikl.data import DataError, DeviceCIFARLoader, build_loaders, data_fingerprint
from ikl.engine.checkpoint import load_checkpoint, load_model_weights
from ikl.engine.curves import write_curves
from ikl.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from ikl.engine.graphs import capture_blocker
from ikl.engine.sink import MetricSink, resolve_wandb_mode, wandb_logged_in, write_json_atomic, write_text_atomic
from ikl.engine.trainer import Interrupted, Trainer, TrainSettings
from ikl.engine.validate import validate_config
from ikl.errors import CheckpointError, ConfigError, UserError
from ikl.tasks import DistillationTask
from ikl.tasks.at import AdversarialTask

log = logging.getLogger("ikl")
TASKS = {"kd": DistillationTask, "at": AdversarialTask}  # task_name -> the task each entry point trains
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# ---------------------------------------------------------------------------------------- errors
def _user_error(exc: BaseException) -> BaseException | None:
    """The user-facing error inside ``exc`` (Hydra wraps constructor errors), if there is one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, (UserError, DataError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def one_line(exc: BaseException) -> str:
    """The message of a user error as one line; an error re-raised from a DataLoader worker carries
    the worker's traceback in its text, whose last line is the original message."""
    text = str(exc).strip()
    if "\n" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    name = type(exc).__name__
    return last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last


def cli(run: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict | None]:
    """Wrap ``run`` for a Hydra ``main``: a user mistake is one line on stderr and exit code 2.

    In a multirun a failed job is recorded (:mod:`ikl.cli.sweep`) and the sweep goes on with the
    next job; a signal (SIGTERM/SIGINT) still stops the whole sweep.
    """

    @functools.wraps(run)
    def wrapper(cfg: DictConfig) -> dict | None:
        threads = torch.get_num_threads()
        try:
            summary = run(cfg)
        except Exception as exc:
            found = _user_error(exc)
            if found is not None:
                sys.stderr.write(f"error: {one_line(found)}\n")
                if not sweep.in_multirun() or isinstance(found, Interrupted):
                    sys.exit(getattr(found, "exit_code", 2))
                sweep.record_job("failed", error=one_line(found))
            elif not sweep.in_multirun():
                raise
            else:  # a defect, not a user mistake: the whole traceback, then the next job
                traceback.print_exc()
                sweep.record_job("failed", error=f"{type(exc).__name__}: {one_line(exc)}")
            _drop_empty_job_dir()
            return None
        finally:
            torch.set_num_threads(threads)
        sweep.record_job("completed", summary=summary)
        _drop_empty_job_dir()
        return summary

    return wrapper


def _drop_empty_job_dir() -> None:
    """The folder Hydra made for a multirun job that ran elsewhere (resumed another run) or was refused."""
    if sweep.in_multirun():
        job_dir = Path(HydraConfig.get().runtime.output_dir)
        with contextlib.suppress(OSError):
            if job_dir.is_dir() and not any(job_dir.iterdir()):
                job_dir.rmdir()


# ------------------------------------------------------------------------------------ validation
def plain(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (no ``${...}`` left)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Resolve and check every value before anything is built or written (one line per mistake)."""
    try:
        config = plain(cfg)
    except Exception as exc:  # noqa: BLE001 - an unresolvable ${...} or a missing ??? value
        raise ConfigError(f"config does not resolve: {str(exc).splitlines()[0]}") from exc
    validate_config(config)
    rundir.check_run_name(str(config["run_name"]))
    if not config.get("out_dir"):
        raise ConfigError("out_dir is empty or null; set out_dir=<folder> (runs go below it)")
    check_logger(cfg)
    if cfg.get("optimizer") is not None:
        check_optimization(cfg)
    device_kind(cfg)  # an unavailable device is named now
    return config


def check_logger(cfg: DictConfig) -> None:
    """The W&B mode is one W&B knows, and an online run has a login (before anything is written)."""
    if cfg.get("logger") is None:
        return
    mode = resolve_wandb_mode(cfg.logger.mode)
    if mode == "online" and not wandb_logged_in():
        raise ConfigError(
            "logger.mode=online (or WANDB_MODE=online) but W&B has no login here; run `wandb login` or set "
            "WANDB_API_KEY, or use logger.mode=offline (files you can `wandb sync` later)"
        )


def check_optimization(cfg: DictConfig) -> None:
    """Build the optimizer and schedule once on a dummy parameter: what they reject is one line now."""
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    try:
        optimizer = instantiate(cfg.optimizer)(params=dummy)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optimizer: {str(exc).splitlines()[0]}; fix the optimizer.* values") from exc
    try:
        instantiate(cfg.scheduler)(optimizer)
    except (ValueError, TypeError, ZeroDivisionError) as exc:
        raise ConfigError(f"scheduler: {str(exc).splitlines()[0]}; fix the scheduler.* values") from exc


def device_kind(cfg: DictConfig) -> str:
    kind = str(cfg.trainer.device)
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={kind} but no CUDA device is visible; use trainer.device=cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.device=mps but MPS is not available; use trainer.device=cpu or auto")
    return kind


def set_threads(cfg: DictConfig, device: torch.device) -> None:
    """``trainer.threads``: intra-op threads of a CPU run (null: the process's, torch's default of one
    per core unless set). The command-line wrapper :func:`cli` puts the count back after each run,
    so the jobs of a multirun (one process) never inherit another job's."""
    threads = cfg.trainer.get("threads")
    if device.type == "cpu" and isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------- preparation
@dataclass
class Start:
    """A run, prepared: where it goes and what it continues; nothing written yet."""

    cfg: DictConfig
    config: dict[str, Any]
    device: torch.device
    dist: DistInfo
    plan: RunPlan
    resume_state: dict[str, Any] | None
    run_name: str
    data_fingerprint: str | None = None  # set by build_data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _hydra_run_dir_override() -> str | None:
    """``hydra.run.dir`` / the sweep's job dir, when they name where this run goes."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not under Hydra (tests use the compose API)
        return None
    if sweep.in_multirun():
        return hydra_cfg.runtime.output_dir
    overridden = any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    return hydra_cfg.runtime.output_dir if overridden else None


def _sweep_job_dir_is_default() -> bool:
    """A multirun job dir named by job number (``hydra.sweep.subdir`` not overridden; the sweep dir
    may be): a new sweep's dirs are new, so resume=true finds each job's run by its identity.
    A subdir the user names (``hydra.sweep.subdir=${run_name}``, as scripts/ do) is the run itself."""
    hydra_cfg = HydraConfig.get()
    return not any(o.split("=", 1)[0].lstrip("+") == "hydra.sweep.subdir" for o in hydra_cfg.overrides.hydra)


def plan_for(cfg: DictConfig, identity: RunIdentity, run_name: str) -> RunPlan:
    out_dir = Path(cfg.out_dir)
    explicit = cfg.get("run_dir") or _hydra_run_dir_override()
    default = rundir.default_run_dir(out_dir, run_name)
    if sweep.in_multirun() and not cfg.get("run_dir") and _sweep_job_dir_is_default():
        default, explicit = Path(explicit), None  # the job dir Hydra made; resume=true searches by identity
    plan = rundir.plan_run(
        identity=identity,
        resume=cfg.get("resume", False),
        run_dir=explicit,
        default_dir=default,
        out_dir=out_dir,
        accept=_sweep_job_accepts(cfg) if sweep.in_multirun() else None,
    )
    if plan.note and not cfg.get("quiet", False):
        log.info(plan.note)
    return plan


def _sweep_job_accepts(cfg: DictConfig) -> Callable[[rundir.RunDirState], bool]:
    """resume=true in a multirun: a run another job of this sweep has taken is not this job's, and a
    swept key that may change on resume (``trainer.epochs=100,200``) must have this job's value."""
    config = rundir._flatten(plain(cfg))
    swept = [k for k in sweep.job_values() if k in config and rundir.may_change(k, str(cfg.task_name))]

    def accept(state: rundir.RunDirState) -> bool:
        attempts = state.marker.get("attempts") or [{}]
        if sweep.claimed_by_another_job(attempts[-1]):
            return False
        if not swept:
            return True
        try:
            old = rundir._flatten(OmegaConf.to_container(OmegaConf.load(state.path / "config.yaml")))
        except Exception:  # noqa: BLE001 - unreadable: not provably this job's run
            return False
        return all(old.get(k) == config[k] for k in swept)

    return accept


def prepare(cfg: DictConfig, config: dict[str, Any], *, task: str, extra: Mapping[str, Any] | None = None) -> Start:
    """Device, process group, identity and plan, the resume checkpoint loaded and checked; no writes."""
    kind = device_kind(cfg)
    dist_info = init_distributed(kind)
    device = resolve_device(kind, dist_info.local_rank)
    set_threads(cfg, device)
    check_cuda_graphs(cfg, device, dist_info)
    placement = {"placement.device": device.type, "placement.world_size": dist_info.world_size}
    if device.type == "cpu":  # the intra-op thread count changes the float summation order on a CPU
        placement["placement.cpu_threads"] = torch.get_num_threads()
    identity = RunIdentity.of(task, config, {**placement, **init_from_identity(cfg), **(extra or {})})
    run_name = sweep.job_run_name(rundir.folder_name(str(cfg.run_name)))
    plan = _on_main(dist_info, lambda: plan_for(cfg, identity, run_name))
    resume_state = None
    if plan.resume_from is not None:
        resume_state = load_checkpoint(plan.resume_from, map_location=device)
        check_resume_state(resume_state, plan.resume_from, identity, cfg)
    seed_everything(int(cfg.seed) + dist_info.rank)
    return Start(cfg, config, device, dist_info, plan, resume_state, run_name)


def _on_main(dist_info: DistInfo, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0, its result (or its one-line error) on every rank."""
    if not dist_info.enabled:
        return make()
    result: Any = None
    error: BaseException | None = None
    if dist_info.is_main:
        try:
            result = ("ok", make())
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it, or they wait forever
            error, result = exc, ("error", str(exc))
    kind, value = broadcast_object(result)
    if error is not None:
        raise error
    if kind == "error":
        raise ConfigError(value)
    return value


def all_ready(dist_info: DistInfo) -> None:
    """Under torchrun: every rank has built its data and models before rank 0 takes the run dir (a
    rank that failed has exited, and torchrun stops the others here, before anything is written)."""
    if dist_info.enabled:
        all_reduce_sum(torch.ones(1, device=_collective_device(dist_info)))


def _collective_device(dist_info: DistInfo) -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_from_identity(cfg: DictConfig) -> dict[str, Any]:
    path = cfg.get("init_from")
    if not path:
        return {}
    if not Path(path).is_file():
        if cfg.get("resume") not in (False, None, "false", "False"):
            return {}  # a resume continues from its own last.pt (init_from.sha256 is in RESUME_IGNORES)
        raise ConfigError(
            f"init_from={path} does not exist; give a checkpoint file (e.g. <run dir>/checkpoints/last.pt)"
        )
    return {"init_from.sha256": rundir.file_sha256(path)}


def initialise_from(model: torch.nn.Module, cfg: DictConfig) -> None:
    """``init_from``: a new run whose model starts from another run's (or any) weights."""
    if cfg.get("init_from"):
        load_model_weights(model, cfg.init_from, what="model (init_from)")
        log.info("model weights initialised from %s", cfg.init_from)


def check_resume_state(state: dict[str, Any], path: Path, identity: RunIdentity, cfg: DictConfig) -> None:
    """Refuse, in one line, a resume checkpoint that is not a training state or not of this run."""
    if state.get("kind") != "train-state":
        raise CheckpointError(
            f"{path} is not a training checkpoint (no optimizer/task state); resume needs the "
            "checkpoints/last.pt that train_kd.py/train_at.py write"
        )
    saved = state.get("identity")
    if not isinstance(saved, Mapping) or "settings" not in saved:
        raise CheckpointError(
            f"{path} carries no run identity (written by an older ikl); it cannot be resumed safely: "
            f"start a new run from its weights with init_from={path}"
        )
    diffs = RunIdentity.from_dict(saved).resume_differences(identity)
    if RunIdentity.from_dict(saved).task != identity.task:
        raise CheckpointError(f"{path} is a {saved['task']} checkpoint; resume it with the entry point that wrote it")
    if diffs:
        raise CheckpointError(
            f"resume refused: {path} was trained with other settings: {rundir.describe_differences(diffs)}; "
            f"resume with its settings, or start a new run from its weights with init_from={path}"
        )
    section = cfg.get("student") or cfg.get("model")
    wanted = (section.get("name") if section is not None else None, cfg.dataset.num_classes)
    written = (state.get("model_name"), state.get("num_classes"))
    if any(s is not None and w is not None and s != w for s, w in zip(written, wanted, strict=True)):
        raise CheckpointError(
            f"{path} holds {written[0]} weights for {written[1]} classes but its run builds {wanted[0]} for "
            f"{wanted[1]} classes: the file is not this run's checkpoint; restore the run's own last.pt"
        )
    done = int(state.get("epoch", 0))
    if int(cfg.trainer.epochs) < done:
        raise ConfigError(
            f"trainer.epochs={cfg.trainer.epochs} but {path} has done {done} epochs; "
            "a run can be extended, not shortened (evaluate a checkpoint instead)"
        )


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


# ---------------------------------------------------------------------------------------- session
@dataclass
class Session:
    run_dir: Path
    device: torch.device
    dist: DistInfo
    sink: MetricSink
    resume_state: dict[str, Any] | None
    config: dict[str, Any]
    identity: RunIdentity
    claimed: ClaimedRun | None = None
    log_handler: logging.Handler | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def close(self, failed: bool, *, keep_lock: bool = False) -> None:
        """Close the sink and the log; release the run dir unless ``keep_lock`` (the caller still
        writes into it, e.g. train_at's summary after its CE baseline: then :meth:`release`)."""
        try:
            self.sink.close(failed=failed)
            if failed and self.dist.is_main:  # a finished run drew its curves in fit()
                write_curves(self.run_dir)
        finally:
            if self.log_handler is not None:
                logging.getLogger().removeHandler(self.log_handler)
                self.log_handler.close()
            if not keep_lock or failed:
                self.release()
            shutdown_distributed()

    def release(self) -> None:
        if self.claimed is not None:
            self.claimed.release()
            self.claimed = None


def _changed_settings(run_dir: Path, config: Mapping[str, Any]) -> dict[str, list]:
    """The allowed settings this attempt changes against the run's config.yaml (for run.json)."""
    path = run_dir / "config.yaml"
    try:
        old = rundir._flatten(OmegaConf.to_container(OmegaConf.load(path))) if path.is_file() else {}
    except Exception as exc:  # noqa: BLE001 - a damaged copy (killed mid-write): the identity decides
        log.warning("%s is unreadable (%s); not comparing the allowed settings", path, type(exc).__name__)
        return {}
    new = rundir._flatten(config)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def open_session(start: Start, *, entry: str) -> Session:
    """Become the run dir's one writer; write run.json, config.yaml, the log file; open the sink."""
    cfg, dist_info, plan = start.cfg, start.dist, start.plan
    config = {**start.config, "run_name": start.run_name}
    all_ready(dist_info)
    claimed = _claim_on_main(dist_info, plan, config, start.data_fingerprint)
    run_dir = Path(_on_main(dist_info, lambda: str(claimed.run_dir)))
    handler = None
    try:
        if dist_info.is_main:
            _write_config(run_dir, config)
            handler = _open_log(run_dir, entry, claimed)
        sink = MetricSink(
            run_dir,
            enabled=dist_info.is_main,
            mode=cfg.logger.mode,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            name=start.run_name,
            group=cfg.logger.group or sweep.sweep_group(),
            tags=list(cfg.logger.tags or []),
            config=config,
            run_id=(start.resume_state or {}).get("wandb_run_id"),
        )
    except BaseException:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if claimed is not None:
            claimed.release()
        raise
    if start.resume_state is None:
        sink.discard_earlier_attempt()  # metrics of an attempt of this run that left no checkpoint
    log.info("run dir: %s (device %s, world size %d)", run_dir, start.device, dist_info.world_size)
    extras = {"data_fingerprint": start.data_fingerprint}
    return Session(
        run_dir, start.device, dist_info, sink, start.resume_state, config, plan.identity, claimed, handler, extras
    )


def code_version() -> dict[str, Any]:
    """The code that ran an attempt (recorded in run.json, not part of the identity)."""
    import subprocess

    import ikl

    out: dict[str, Any] = {"ikl": getattr(ikl, "__version__", None), "torch": torch.__version__}
    try:
        root = Path(ikl.__file__).resolve().parents[1]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if head.returncode == 0:
            out["commit"] = head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _claim_on_main(
    dist_info: DistInfo, plan: RunPlan, config: Mapping[str, Any], data: str | None = None
) -> ClaimedRun | None:
    """Rank 0 claims the run dir; a refusal reaches every rank (none waits for a broadcast forever)."""
    claimed, error = None, None
    if dist_info.is_main:
        try:
            changed = _changed_settings(plan.run_dir, config) if plan.resume_from else {}
            attempt = {"changed": changed, "data_fingerprint": data, "code": code_version(), **sweep.job_tag()}
            claimed = rundir.claim(plan, attempt=attempt)
        except Exception as exc:  # noqa: BLE001 - reported to every rank, then raised here
            error = exc
    if dist_info.enabled:
        message = broadcast_object(None if error is None else str(error))
        if message is not None and error is None:
            error = ConfigError(message)
    if error is not None:
        raise error
    return claimed


def _write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    try:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(dict(config))))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {run_dir / 'config.yaml'}: {exc.strerror or exc}; choose a writable run_dir"
        ) from exc


def _open_log(run_dir: Path, entry: str, claimed: ClaimedRun | None) -> logging.Handler:
    """One log file per run (``<entry>.log``), appended to by every attempt."""
    handler = logging.FileHandler(run_dir / f"{entry}.log", mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    attempts = len(claimed.marker.get("attempts", [])) if claimed else 1
    log.info("---- attempt %d: %s", attempts, " ".join(sys.argv))
    return handler


# ----------------------------------------------------------------------------------- building
def load_datasets(cfg: DictConfig):
    """The configured datasets, checked against ``dataset.num_classes``."""
    datasets = instantiate(cfg.dataset.builder)
    if datasets.num_classes != cfg.dataset.num_classes:
        raise ConfigError(
            f"dataset.num_classes={cfg.dataset.num_classes} but the data has {datasets.num_classes} classes; fix the dataset config"
        )
    return datasets


def build_data(cfg: DictConfig, start: Start | Session):
    """Datasets and (train, test) loaders; ``trainer.loader=device`` keeps uint8 splits on the device.

    A resumed run must see the data it was trained on: the splits' fingerprint (sizes, labels,
    sampled pixels, file names) is compared with its checkpoint's, since the data roots may change.
    """
    datasets = load_datasets(cfg)
    if isinstance(start, Start):
        start.data_fingerprint = data_fingerprint(datasets)
        _check_same_data(start)
    dist_info = start.dist
    train_loader, test_loader = build_loaders(
        datasets,
        batch_size=cfg.batch_size,
        test_batch_size=cfg.test_batch_size,
        workers=cfg.trainer.workers,
        seed=cfg.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        pin_memory=start.device.type == "cuda",
        drop_last=cfg.trainer.drop_last,
        aug_repeats=cfg.trainer.aug_repeats,
    )
    loader = cfg.trainer.loader
    if loader == "auto":  # the device-resident loader where it pays: CUDA, in-memory uint8 data, one view
        loader = "device" if start.device.type == "cuda" and hasattr(datasets.train, "data") else "standard"
    if loader == "device":
        if datasets.two_view or not hasattr(datasets.train, "data"):
            log.info("trainer.loader=device does not support this data/augmentation: using the standard loader")
        else:
            train_loader = DeviceCIFARLoader.from_datasets(
                datasets,
                train=True,
                batch_size=cfg.batch_size,
                device=start.device,
                seed=cfg.seed,
                rank=dist_info.rank,
                world_size=dist_info.world_size,
                channels_last=cfg.trainer.channels_last,
                drop_last=cfg.trainer.drop_last,
            )
    elif loader != "standard":
        raise ConfigError(f"trainer.loader={loader!r} is not one of auto, standard, device")
    return datasets, train_loader, test_loader


def _check_same_data(start: Start) -> None:
    saved = (start.resume_state or {}).get("data_fingerprint")
    if saved is not None and saved != start.data_fingerprint:
        raise ConfigError(
            f"resume refused: {start.plan.resume_from} was trained on other data (fingerprint {saved}, now "
            f"{start.data_fingerprint}): other images, labels or files under dataset.builder.*; point the data "
            "roots at the copy the run was trained on"
        )


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
        progress=bool(t.progress),
    )


def weights_meta(
    model_name: str, num_classes: int, datasets, identity: RunIdentity, data: str | None = None
) -> dict[str, Any]:
    """What every checkpoint says: architecture, classes, input normalisation, the run's identity and
    the fingerprint of the data it was trained on."""
    norm = {"mean": list(datasets.mean), "std": list(datasets.std)} if datasets.normalized else None
    return {
        "format": "ikl-checkpoint",
        "model_name": model_name,
        "num_classes": num_classes,
        "input_normalization": norm,
        "identity": identity.to_dict(),
        "data_fingerprint": data,
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


def report(summary: dict[str, Any], dist: DistInfo, *, title: str = "run summary") -> None:
    """The final summary on stdout (rank 0): the entry point's one human-readable result."""
    if not dist.is_main:
        return
    shown = {k: v for k, v in summary.items() if v is not None}
    width = max(len(k) for k in shown)
    lines = ["", "=" * 60, title] + [f"  {k:<{width}} : {_fmt(v)}" for k, v in shown.items()] + ["=" * 60]
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
        weights_meta=weights_meta(
            model_name, datasets.num_classes, datasets, session.identity, session.extras.get("data_fingerprint")
        ),
        class_groups=datasets.class_groups,
    )
    if session.resume_state is not None:
        trainer.restore(session.resume_state)
    summary = {**trainer.fit(), "wandb_dir": session.sink.wandb_dir}
    curves = write_curves(session.run_dir) if session.dist.is_main else None
    summary["curves"] = str(curves) if curves else None
    if trainer.epoch < trainer.settings.epochs:
        summary["continue_with"] = (
            f"resume=true (or resume={session.run_dir}) to train epochs {trainer.epoch + 1}-{trainer.settings.epochs}"
        )
    return summary
