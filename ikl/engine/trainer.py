"""The one training loop for every method (conventions rule 6).

The engine knows tasks only through their contract (``ikl.tasks.base.Task``): ``forward(x, y,
epoch=)`` returns a dict with ``loss``, ``logits`` and every named ``loss_*`` term (floats named
``time_*`` are timings); epoch hooks update class priors and EMAs; ``checkpoint_state`` holds
everything a resume needs beyond the optimizer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ikl.data import group_accuracies
from ikl.data import set_epoch as set_loader_epoch
from ikl.engine.checkpoint import last_good, nonfinite_tensors, save_checkpoint
from ikl.engine.distributed import DistInfo, all_reduce_sum, unwrap
from ikl.engine.graphs import StepGraph, capture_blocker, optimizer_key
from ikl.engine.sink import MetricSink, write_json_atomic
from ikl.errors import ConfigError, UserError

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Test switches (reliability suite): make the loss NaN at this global step; send this process
# SIGTERM right after this global step.
NAN_STEP_ENV = "IKL_TEST_NAN_AT_STEP"
SIGTERM_STEP_ENV = "IKL_TEST_SIGTERM_AFTER_STEP"


class NonFiniteLossError(UserError):
    """The loss became NaN or Inf; the run stops and the last good checkpoint is kept."""


class Interrupted(UserError):
    """SIGTERM/SIGINT: the run stopped cleanly at a step boundary (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class TrainSettings:
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False  # replay each training step as one CUDA graph (graph-safe tasks, one process)
    grad_clip: float | None = None
    log_every: int = 50
    # steps between host reads of the non-finite-loss flag (each read waits for the device);
    # 0: every step on the CPU, every ``log_every`` steps on an accelerator. The first bad step is
    # recorded on the device either way, so the report names it exactly.
    finite_check_every: int = 0
    save_every: int = 1
    monitor: Mapping[str, str] = field(default_factory=lambda: {"best": "test/acc"})
    progress: bool = True
    stop_after: int | None = None  # epochs to run in this invocation (time-limited jobs); resume later

    def __post_init__(self) -> None:
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"trainer.amp={self.amp!r} is not one of {sorted(AMP_DTYPES)}")

    @property
    def check_every(self) -> int:
        if self.finite_check_every > 0:
            return self.finite_check_every
        return 1 if self.device.type == "cpu" else self.log_every


def rng_state() -> dict[str, Any]:
    """Every RNG a step may draw from, in types that load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def to_device(batch, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]
    x = x.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


@torch.no_grad()
def classification_counts(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp: str = "off",
    channels_last: bool = False,
    num_classes: int = 0,
) -> torch.Tensor:
    """[correct@1, correct@5, n] summed over this rank's shard (all-reduce to combine); with
    ``num_classes`` C, then correct@1 per class and images per class (``3 + 2C`` entries)."""
    was_training = model.training
    model.eval()
    counts = torch.zeros(3 + 2 * num_classes, dtype=torch.float64, device=device)
    dtype = AMP_DTYPES[amp]
    for batch in loader:
        x, y = to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        top = logits.float().topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(y.unsqueeze(1))
        counts[:3] += torch.tensor(
            [hits[:, 0].sum().item(), hits.any(1).sum().item(), len(y)], device=device, dtype=counts.dtype
        )
        if num_classes:  # correct@1 of class c at 3 + c, images of class c at 3 + C + c
            counts.index_add_(0, 3 + y, hits[:, 0].to(counts.dtype))
            counts.index_add_(0, 3 + num_classes + y, torch.ones_like(counts[3 + y]))
    model.train(was_training)
    return counts


def evaluate_classifier(model: nn.Module, loader: DataLoader, device: torch.device, **kw) -> dict[str, Any]:
    """Top-1/top-5 accuracy (%) over every test sample exactly once across ranks (with ``num_classes``,
    also ``class_correct`` / ``class_n``: per-class counts as float64 CPU tensors)."""
    counts = all_reduce_sum(classification_counts(model, loader, device, **kw)).cpu()
    correct1, correct5, n = counts[:3].tolist()
    out = {"acc": 100.0 * correct1 / max(n, 1), "acc_top5": 100.0 * correct5 / max(n, 1), "n": int(n)}
    if kw.get("num_classes"):
        out["class_correct"], out["class_n"] = counts[3:].chunk(2)
    return out


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class _EpochProgress:
    """Running sums of one epoch, kept on the device so a step never waits for it to be read.

    Part of a mid-epoch checkpoint (as host numbers); a resumed epoch continues from the same
    float64 sums in the same order, so it logs exactly what an uninterrupted epoch would.
    """

    def __init__(
        self,
        device: torch.device | None = None,
        *,
        sums: Mapping[str, float] | None = None,
        correct: int = 0,
        seen: int = 0,
        data_time: float = 0.0,
        step_time: float = 0.0,
        batches_done: int = 0,
    ) -> None:
        self.device = device = device or torch.device("cpu")
        self.dtype = _accumulator_dtype(device)
        sums = dict(sums or {})
        self.times = {k: v for k, v in sums.items() if k.startswith("time_")}  # host timings, host sums
        self.totals = {
            k: torch.tensor(v, dtype=self.dtype, device=device) for k, v in sums.items() if k not in self.times
        }
        self.correct_total = torch.tensor(correct, dtype=torch.int64, device=device)
        self.seen, self.data_time, self.step_time, self.batches_done = seen, data_time, step_time, batches_done

    def add(self, out: Mapping[str, Any], y: torch.Tensor) -> None:
        """Add one step's loss terms (× batch size), timings and correct predictions; no host read."""
        n = len(y)
        for key, value in out.items():
            if key.startswith("time_"):
                self.times[key] = self.times.get(key, 0.0) + float(value)
            elif key.startswith("loss"):
                value = torch.as_tensor(value).detach().to(self.device, self.dtype) * n
                self.totals[key] = self.totals[key] + value if key in self.totals else value
        logits = out["logits"]
        labels = y if logits.shape[0] == n else y.repeat(logits.shape[0] // n)
        # accuracy of the (first-view) predictions; two-view batches count each sample once
        hits = (logits.argmax(1) == labels).sum()
        self.correct_total = self.correct_total + (hits if len(labels) == n else hits * n // len(labels))
        self.seen += n

    @property
    def sums(self) -> dict[str, float]:
        values = torch.stack(list(self.totals.values())).tolist() if self.totals else []
        return {**dict(zip(self.totals, values, strict=True)), **self.times}

    @property
    def correct(self) -> int:
        return int(self.correct_total)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.seen, 1)

    def metrics(self, trainer: Trainer, elapsed: float) -> dict[str, float]:
        sums = self.sums
        totals = torch.tensor([self.seen, self.correct, self.data_time, self.step_time], dtype=torch.float64)
        seen, correct, _, _ = all_reduce_sum(totals.to(trainer.device)).tolist()
        metrics = {f"train/{k}": v / max(self.seen, 1) for k, v in sums.items() if k.startswith("loss")}
        metrics.update({f"time/{k[5:]}": v for k, v in sums.items() if k.startswith("time_")})
        metrics.update(
            {
                "train/acc": 100.0 * correct / max(seen, 1),
                "train/lr": trainer._lr(),
                "time/data": self.data_time,
                "time/step": self.step_time,
                "time/epoch": elapsed,
                "train/images_per_s": seen / max(elapsed, 1e-9),
            }
        )
        return metrics

    def state(self) -> dict[str, Any]:
        return {
            "sums": self.sums,
            "correct": self.correct,
            "seen": self.seen,
            "data_time": self.data_time,
            "step_time": self.step_time,
            "batches_done": self.batches_done,
        }


class _FiniteWatch:
    """The first step of an epoch whose loss is NaN/Inf, recorded on the device without a host read.

    ``record`` after every step; ``first_bad`` reads the record (one synchronisation) and is called
    every ``TrainSettings.check_every`` steps and before anything is saved.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.batch_index = torch.full((), -1, dtype=torch.int64, device=device)
        self.step = torch.full((), -1, dtype=torch.int64, device=device)
        self.terms: torch.Tensor | None = None
        self.names: list[str] = []

    def record(self, out: Mapping[str, Any], step: int, batch_index: int) -> None:
        names = [k for k, v in out.items() if k.startswith("loss") and isinstance(v, torch.Tensor)]
        values = torch.stack([out[k].detach().float().reshape(()) for k in names])
        newly_bad = ~torch.isfinite(out["loss"].detach()).all() & (self.batch_index < 0)
        self.batch_index = torch.where(newly_bad, batch_index, self.batch_index)
        self.step = torch.where(newly_bad, step, self.step)
        if self.terms is None or names != self.names:
            self.names, self.terms = names, torch.zeros_like(values)
        self.terms = torch.where(newly_bad, values, self.terms)

    def first_bad(self) -> tuple[int, int, dict[str, float]] | None:
        """(step, batch index, loss terms) of the first non-finite step, or None."""
        batch_index, step = torch.stack([self.batch_index, self.step]).tolist()
        if batch_index < 0:
            return None
        return step, batch_index, dict(zip(self.names, self.terms.tolist(), strict=True))


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag checked at step boundaries."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: no handler
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs ``settings.epochs`` epochs of a task with evaluation, logging and checkpoints."""

    def __init__(
        self,
        task: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train_loader: DataLoader,
        test_loader: DataLoader,
        settings: TrainSettings,
        *,
        run_dir: str | os.PathLike,
        sink: MetricSink,
        dist_info: DistInfo | None = None,
        weights_meta: Mapping[str, Any] | None = None,
        class_groups: Mapping[str, Any] | None = None,
    ) -> None:
        self.class_groups = dict(class_groups or {})  # name -> class indices: test/acc_<name> each evaluation
        self.task = task
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.settings = settings
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sink = sink
        self.dist = dist_info or DistInfo()
        self.weights_meta = dict(weights_meta or {})
        self.device = settings.device
        self.amp_dtype = AMP_DTYPES[settings.amp]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.amp == "fp16")
        self.epoch = 0
        self.step = 0
        self.best: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, float]] = []
        self._nan_step = int(os.environ.get(NAN_STEP_ENV, "-1"))
        self._sigterm_step = int(os.environ.get(SIGTERM_STEP_ENV, "-1"))
        self._resume_progress: dict[str, Any] | None = None
        self._stop = _StopFlag()
        self._last_epoch_now = settings.epochs  # the last epoch this call of fit() trains (stop_after)
        self._finite = _FiniteWatch(self.device)
        self.graph = self._step_graph() if settings.cuda_graphs else None

    def _step_graph(self) -> StepGraph:
        """The CUDA-graph runner, after checking that this run can be captured (one line otherwise)."""
        why = capture_blocker(
            task=type(self.task).__name__,
            graph_safe=getattr(self.task, "graph_safe", False),
            amp=self.settings.amp,
            distributed=self.dist.enabled,
            optimizer=type(self.optimizer).__name__,
            tensor_lr=any(isinstance(group["lr"], torch.Tensor) for group in self.optimizer.param_groups),
            device=self.device.type,
        )
        if why:
            raise ConfigError(f"trainer.cuda_graphs=true: {why}")
        if self.device.index is not None:  # side streams and the capture stream belong to the current device
            torch.cuda.set_device(self.device)  # (a bare "cuda" device already is the current one)
        return StepGraph(lambda: self.optimizer.zero_grad(set_to_none=True))

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "ikl-checkpoint",
            "kind": "train-state",
            "epoch": self.epoch,
            "step": self.step,
            "task": self.task.checkpoint_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best": self.best,
            "history": self.history,
            "wandb_run_id": self.sink.run_id,
            "epoch_in_progress": None,
            **self._weights_fields(unwrap(self.task.model)),
        }

    def _weights_fields(self, model: nn.Module) -> dict[str, Any]:
        return {"model": unwrap(model).state_dict(), **self.weights_meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task.load_checkpoint_state(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best = dict(state["best"])
        self.history = list(state["history"])
        self._resume_progress = state.get("epoch_in_progress")
        if self.graph is not None:
            self.graph.reset()  # the optimizer's momentum buffers are new tensors now

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state_dict` (end of epoch or mid-epoch)."""
        self.load_state_dict(state)
        self.sink.truncate_after(self.epoch, self.step)
        where = (
            f", mid-epoch at batch {self._resume_progress['progress']['batches_done']}" if self._resume_progress else ""
        )
        log.info("resumed after epoch %d (step %d%s)", self.epoch, self.step, where)

    # ----------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        last_epoch = self.settings.epochs
        if self.settings.stop_after:
            last_epoch = min(last_epoch, self.epoch + self.settings.stop_after)
        with _StopFlag() as stop:
            self._stop = stop
            self._last_epoch_now = last_epoch
            while self.epoch < last_epoch:
                epoch = self.epoch + 1
                train_metrics = self.train_epoch(epoch)
                self.epoch = epoch
                self.scheduler.step()
                metrics = {**train_metrics, **self.evaluate(epoch)}
                self._check_state_finite(epoch)
                self._record(epoch, metrics)
                self._save(epoch)
        return self.summary()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch; continues a half-done epoch when resumed from a mid-epoch (SIGTERM) checkpoint."""
        self.task.train()
        self.task.on_epoch_start(epoch)
        set_epoch(self.train_loader, epoch)
        progress, skip, pending_rng = self._take_resume_progress(epoch)
        self._finite = _FiniteWatch(self.device)
        bar = tqdm(
            total=len(self.train_loader),
            initial=skip,
            desc=f"epoch {epoch}/{self.settings.epochs}",
            disable=None if self.settings.progress and self.dist.is_main else True,  # None: tqdm shows it on a TTY
            leave=False,
            dynamic_ncols=True,
        )
        start = tic = time.perf_counter()
        for batch_index, batch in enumerate(self.train_loader):
            if batch_index < skip:
                # Loading (not training on) the finished batches replays the loader's own random
                # state; the global RNG is then put back to where the interrupted run stood.
                if batch_index == skip - 1:
                    set_rng_state(pending_rng)
                tic = time.perf_counter()
                continue
            x, y = to_device(batch, self.device, self.settings.channels_last)
            progress.data_time += time.perf_counter() - tic
            tic = time.perf_counter()
            out = self.train_step(x, y, epoch, batch_index)
            progress.step_time += time.perf_counter() - tic
            progress.add(out, y)
            progress.batches_done = batch_index + 1
            if self.step % self.settings.check_every == 0:
                self._check_finite(epoch)
            if self.step % self.settings.log_every == 0:  # reading the loss and accuracy waits for the device
                if self.dist.is_main:
                    self.sink.log(
                        {"train/loss_step": float(out["loss"]), "train/lr": self._lr()}, step=self.step, epoch=epoch
                    )
                if not bar.disable:
                    bar.set_postfix(loss=f"{float(out['loss']):.3f}", acc=f"{progress.accuracy:.1f}")
            bar.update()
            if self._stop_requested():
                bar.close()
                self._interrupted(epoch, progress)
            tic = time.perf_counter()
        bar.close()
        self._check_finite(epoch)
        self.task.on_epoch_end(epoch)
        return progress.metrics(self, time.perf_counter() - start)

    def _take_resume_progress(self, epoch: int) -> tuple[_EpochProgress, int, Any]:
        saved, self._resume_progress = self._resume_progress, None
        if saved is None or saved["epoch"] != epoch:
            return _EpochProgress(self.device), 0, None
        progress = _EpochProgress(self.device, **saved["progress"])
        return progress, progress.batches_done, saved["rng"]

    def _stop_requested(self) -> bool:
        """A signal seen by any rank stops every rank after the same step (no rank waits forever)."""
        if not self.dist.enabled:
            return self._stop.signal is not None
        flag = torch.tensor([float(self._stop.signal is not None)], device=self.device)
        return bool(all_reduce_sum(flag).item() > 0)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, batch_index: int) -> dict[str, Any]:
        """One optimisation step (through the CUDA graph when there is one); returns detached outputs."""
        if self.graph is None:
            self.optimizer.zero_grad(set_to_none=True)
            out = self._optimize(x, y, epoch)
        elif self.step == self._nan_step:  # the test switch is Python-side: keep it out of the graph
            out = self.graph.eager(x, y, lambda xs, ys: self._optimize(xs, ys, epoch))
        else:
            key = (epoch, optimizer_key(self.optimizer))
            out = self.graph.step(key, x, y, lambda xs, ys: self._optimize(xs, ys, epoch))
        self._finite.record(out, self.step, batch_index)
        self.task.after_optimizer_step(self.step)
        self.step += 1
        if self.step == self._sigterm_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    def _optimize(self, x: torch.Tensor, y: torch.Tensor, epoch: int) -> dict[str, Any]:
        """Forward, backward and optimizer step, reading nothing back from the device (capturable)."""
        with torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
            cache_enabled=self.graph is None,  # a graph must not capture autocast's cast-weight cache
        ):
            out = self.task(x, y, epoch=epoch)
        loss = out["loss"]
        if self.step == self._nan_step:
            loss = out["loss"] = loss * float("nan")
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.task.model.parameters(), self.settings.grad_clip)
        self.task.before_optimizer_step(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def _check_finite(self, epoch: int) -> None:
        bad = self._finite.first_bad()
        if bad is not None:
            self._nonfinite(epoch, *bad)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, epoch: int) -> dict[str, float]:
        tic = time.perf_counter()
        kw = dict(amp=self.settings.amp, channels_last=self.settings.channels_last)
        if self.class_groups:  # per-class counts for the group accuracies
            kw["num_classes"] = self.weights_meta.get("num_classes") or 1 + max(
                c for v in self.class_groups.values() for c in v
            )
        result = evaluate_classifier(self.task.model, self.test_loader, self.device, **kw)
        metrics = {"test/acc": result["acc"], "test/acc_top5": result["acc_top5"], "test/n": result["n"]}
        if self.class_groups:
            groups = group_accuracies(result["class_correct"], result["class_n"], self.class_groups)
            metrics.update({f"test/acc_{name}": value for name, value in groups.items()})
        metrics.update(self.task.evaluate(self.test_loader, self.device, epoch))
        metrics["time/eval"] = time.perf_counter() - tic
        return metrics

    # ----------------------------------------------------------------- bookkeeping
    def _record(self, epoch: int, metrics: dict[str, float]) -> None:
        self.history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
        for name, key in self.settings.monitor.items():
            if key in metrics and (name not in self.best or metrics[key] > self.best[name]["value"]):
                self.best[name] = {"value": float(metrics[key]), "epoch": epoch, "metric": key}
                if self.dist.is_main:
                    self._write(
                        {**self._weights_fields(self.task.model), "epoch": epoch, key: metrics[key]},
                        self.ckpt_dir / f"{name}.pt",
                        epoch,
                    )
        if self.dist.is_main:
            self.sink.log(metrics, step=self.step, epoch=epoch)
            shown = {k: round(v, 3) for k, v in metrics.items() if k.startswith(("test/", "train/acc", "train/loss"))}
            log.info("epoch %d/%d %s", epoch, self.settings.epochs, shown)

    def _save(self, epoch: int) -> None:
        if not self.dist.is_main:
            return
        for name, module in self.task.weight_files().items():
            self._write({**self._weights_fields(module), "epoch": epoch}, self.ckpt_dir / f"{name}.pt", epoch)
        # the last epoch of this invocation too (stop_after): a run always stops where it can resume
        if epoch % self.settings.save_every == 0 or epoch in (self.settings.epochs, self._last_epoch_now):
            self._write(self.state_dict(), self.ckpt_dir / "last.pt", epoch)
        if epoch == self.settings.epochs:
            accuracy = self.history[-1].get("test/acc") if self.history else None
            self._write(
                {**self._weights_fields(self.task.model), "epoch": epoch, "accuracy": accuracy},
                self.ckpt_dir / "final.pt",
                epoch,
            )

    def _check_state_finite(self, epoch: int) -> None:
        """Every rank checks its weights, optimizer and task state before the epoch's checkpoints, so
        under DDP all ranks stop together (replicas hold the same values) instead of one waiting."""
        state = {
            "model": unwrap(self.task.model).state_dict(),
            "optimizer": self.optimizer.state_dict()["state"],
            "task": self.task.checkpoint_state(),
        }
        bad = nonfinite_tensors(state)
        if bad:
            self._nonfinite_state(epoch, self.ckpt_dir / "last.pt", bad)

    def _write(self, state: Mapping[str, Any], path: Path, epoch: int) -> None:
        """Save ``state`` only when every floating-point tensor in it is finite (weights, optimizer
        state, EMA, class prior): a model that diverged while its loss still looked finite stops the
        run here, and the checkpoints on disk stay the last good ones."""
        bad = nonfinite_tensors(state)
        if bad:
            self._nonfinite_state(epoch, path, bad)
        save_checkpoint(state, path)

    def _nonfinite_state(self, epoch: int, path: Path, bad: list[str]) -> None:
        report = {"epoch": epoch, "step": self.step, "checkpoint": path.name, "nonfinite_tensors": bad[:50]}
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "nonfinite_batch.json", report)
        raise NonFiniteLossError(
            f"model state became non-finite by epoch {epoch}, step {self.step} ({len(bad)} tensors, first {bad[0]}) "
            f"while the loss stayed finite; no checkpoint of epoch {epoch} was written ({path.name} neither); {last_good(self.ckpt_dir / 'last.pt')}; "
            f"details in {self.run_dir / 'nonfinite_batch.json'}; try a lower lr or trainer.amp=off"
        )

    def _nonfinite(self, epoch: int, step: int, batch_index: int, terms: dict[str, float]) -> None:
        sampler_indices = _batch_sample_indices(self.train_loader, epoch, batch_index)
        report = {
            "epoch": epoch,
            "step": step,
            "batch_index": batch_index,
            "sample_indices": sampler_indices,
            "terms": terms,
        }
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "nonfinite_batch.json", report)
        kept = last_good(self.ckpt_dir / "last.pt")
        raise NonFiniteLossError(
            f"loss became non-finite at epoch {epoch}, step {step} (batch {batch_index}); {kept}; "
            f"batch indices and terms in {self.run_dir / 'nonfinite_batch.json'}; try a lower lr or trainer.amp=off"
        )

    def _interrupted(self, epoch: int, progress: _EpochProgress) -> None:
        """Save a resumable mid-epoch checkpoint (single process), then stop with one line.

        Under DDP the class-prior accumulators are per rank, so no mid-epoch state is written there:
        the last end-of-epoch checkpoint stays and the interrupted epoch is redone on resume.
        """
        self._check_finite(epoch)  # never save weights a non-finite step has touched
        signum = self._stop.signal or signal.SIGTERM
        last = self.ckpt_dir / "last.pt"
        if self.dist.enabled:
            kept = last_good(last)
            raise Interrupted(
                f"{signal.Signals(signum).name} received during epoch {epoch}: {kept}; continue with resume=true",
                signum,
            )
        state = self.state_dict()
        state["epoch_in_progress"] = {"epoch": epoch, "progress": progress.state(), "rng": state["rng"]}
        self._write(state, last, epoch)
        raise Interrupted(
            f"{signal.Signals(signum).name} received: saved epoch {epoch} at batch {progress.batches_done}/"
            f"{len(self.train_loader)} to {last}; continue with resume=true",
            signum,
        )

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        best = self.best.get("best", {})
        out = {
            "acc_last": last.get("test/acc"),
            "acc_best": best.get("value"),
            "epoch_best": best.get("epoch"),
            "epochs": self.epoch,
            "steps": self.step,
            "run_dir": str(self.run_dir),
        }
        for name, record in self.best.items():
            if name != "best":
                out[f"{name}_value"], out[f"{name}_epoch"] = record["value"], record["epoch"]
        out.update(
            {k.replace("/", "_") + "_last": v for k, v in last.items() if k.startswith("test/") and k != "test/acc"}
        )
        return out


def set_epoch(loader, epoch: int) -> None:
    """Select epoch ``epoch``'s order: device loaders reseed themselves, DataLoaders their sampler."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    else:
        set_loader_epoch(loader, epoch)


def _batch_sample_indices(loader: DataLoader, epoch: int, batch_index: int) -> list[int] | None:
    """Dataset indices of batch ``batch_index`` of ``epoch``: reseeding the sampler replays its order."""
    try:
        set_epoch(loader, epoch)
        if hasattr(loader, "indices"):
            order = loader.indices().tolist()
            return order[batch_index * loader.batch_size : (batch_index + 1) * loader.batch_size]
        batches = list(loader.batch_sampler)
        return [int(i) for i in batches[batch_index]]
    except (TypeError, AttributeError, IndexError):
        return None
