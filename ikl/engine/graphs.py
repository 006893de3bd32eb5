"""Whole-step CUDA graphs: a training step (forward, backward, optimizer step) replayed as one launch.

Small CIFAR models (resnet8x4 with a resnet32x4 teacher at batch 64) keep an H200 busy for about
2 ms of a 10-14 ms eager step: the rest is Python and kernel launches (``results/gpu/``). A CUDA
graph records the step's kernels once and replays them with a single launch, so the step costs
what the GPU needs. The recipe is PyTorch's whole-network capture ("CUDA Graphs" in the CUDA
semantics notes): warm up on a side stream, set the gradients to None so the captured backward
*writes* them (replays overwrite instead of accumulating), capture, then copy every new batch into
the static input buffers and replay.

What a graph bakes in is the Python-side state at capture: the learning rate and every other
scalar of the optimizer's param groups, the task's epoch-dependent factors (KD warm-up), the batch
shape and memory format. :class:`StepGraph` captures again whenever that *key* changes (once per
epoch with per-epoch schedules) and runs a batch of another shape (the last, partial batch of an
epoch) eagerly. Graphs are only for tasks that declare ``graph_safe`` (no host synchronisation and
no data-dependent Python inside ``forward``).

``backend="eager"`` runs the same bookkeeping without CUDA (each "replay" re-runs the step eagerly
with fresh gradients, as a replay would) so the orchestration is tested on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

StepFn = Callable[[Tensor, Tensor], Mapping[str, Any]]
BACKENDS = ("cuda", "eager")


def optimizer_key(optimizer: torch.optim.Optimizer) -> tuple:
    """The scalars of every param group (lr, momentum, weight decay, ...): a capture bakes them in."""
    return tuple(
        tuple(sorted((k, v) for k, v in group.items() if isinstance(v, (bool, int, float, str))))
        for group in optimizer.param_groups
    )


def capture_blocker(
    *, task: str, graph_safe: bool, amp: str, distributed: bool, optimizer: str, tensor_lr: bool, device: str
) -> str | None:
    """Why a run cannot use whole-step CUDA graphs (``trainer.cuda_graphs=true``), or None if it can."""
    if not graph_safe:
        return f"{task} is not graph-safe (knowledge distillation is; use trainer.compile)"
    if amp == "fp16":
        return "fp16's loss scaler reads the device every step; use trainer.amp=bf16 or off"
    if distributed:
        return "it runs one process only (DDP's gradient all-reduce is not captured here)"
    if optimizer != "SGD":
        return f"it supports torch.optim.SGD only, not {optimizer}"
    if tensor_lr:
        return "a tensor learning rate is read on the host by SGD; give the lr as a number"
    if device != "cuda":
        return f"it needs a CUDA device, and this run is on {device}"
    return None


def batch_key(x: Tensor, y: Tensor) -> tuple:
    return (tuple(x.shape), x.stride(), x.dtype, x.device, tuple(y.shape), y.dtype)


class StepGraph:
    """Captures ``step_fn`` once per key and replays it for every batch of the captured shape.

    ``step_fn(x, y)`` must run forward, backward and the optimizer step without reading any device
    value on the host. ``zero_grad`` sets the gradients to None before a capture (and before each
    eager step). Every batch shape runs eagerly once before it may be captured (lazy cuBLAS/cuDNN
    set-up and ``torch.compile`` must not happen inside a capture).
    """

    def __init__(self, zero_grad: Callable[[], None], *, warmup_steps: int = 3, backend: str = "cuda") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
        self.zero_grad = zero_grad
        self.backend = backend
        self.warmup_left = warmup_steps
        self.captures = 0  # how many times a step was captured (tests and the benchmark report it)
        self.replays = 0
        self.eager_steps = 0
        self._warm: set[tuple] = set()  # batch shapes that have run eagerly
        self._key: Hashable | None = None
        self._graph: Any = None
        self._step_fn: StepFn | None = None
        self._static: tuple[Tensor, Tensor] | None = None
        self._static_out: Mapping[str, Any] | None = None

    def reset(self) -> None:
        """Forget the captured step (after the optimizer's state tensors were replaced, e.g. by
        ``load_state_dict``); the next full batch is captured again."""
        self._key = self._graph = self._step_fn = self._static = self._static_out = None

    def step(self, key: Hashable, x: Tensor, y: Tensor, step_fn: StepFn) -> Mapping[str, Any]:
        """Run one step: eagerly while warming up or for another batch shape, else through the graph.

        The returned tensors of a replay are the graph's static outputs: the next replay overwrites
        them, so read them (or launch the work that reads them) before the next step.
        """
        shape = batch_key(x, y)
        if self.warmup_left > 0 or shape not in self._warm:
            self.warmup_left = max(self.warmup_left - 1, 0)
            self._warm.add(shape)
            return self.eager(x, y, step_fn)
        key = (key, shape)
        if self._key is not None and key[0] == self._key[0] and shape != self._key[1]:
            return self.eager(x, y, step_fn)  # an epoch's last, partial batch
        if key != self._key:
            self._capture(key, x, y, step_fn)
        static_x, static_y = self._static
        static_x.copy_(x)
        static_y.copy_(y)
        return self._replay()

    def eager(self, x: Tensor, y: Tensor, step_fn: StepFn) -> Mapping[str, Any]:
        """An ordinary step (on CUDA on a side stream, as capture needs for its warm-up).

        It points ``.grad`` at new tensors, which the captured graph does not write, so the graph is
        dropped and captured again at the next full batch (once per epoch at most).
        """
        self.reset()
        self.eager_steps += 1
        self.zero_grad()
        if self.backend == "eager":
            return step_fn(x, y)
        with torch.cuda.device(x.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = step_fn(x, y)
            torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, key: Hashable, x: Tensor, y: Tensor, step_fn: StepFn) -> None:
        self.reset()  # free the previous graph's pool before recording the next one
        self._static = (x.clone(), y.clone())  # clone keeps the memory format (channels_last)
        self.zero_grad()  # the captured backward then allocates and writes .grad instead of accumulating
        if self.backend == "cuda":
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may call CUDA while this thread captures
            with torch.cuda.device(x.device), torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._static_out = step_fn(*self._static)
            self._graph = graph
        else:
            self._step_fn = step_fn
        self._key = key
        self.captures += 1
        log.debug("captured a training step (capture %d, key %s)", self.captures, key)

    def _replay(self) -> Mapping[str, Any]:
        self.replays += 1
        if self.backend == "cuda":
            self._graph.replay()
            return self._static_out
        # eager backend: fresh gradients, and the results written into the same output tensors every
        # time, so a caller that kept last step's outputs sees them overwritten, as after a replay
        self.zero_grad()
        out = self._step_fn(*self._static)
        if self._static_out is None:
            self._static_out = dict(out)
        else:
            for name, value in out.items():
                if isinstance(value, Tensor):
                    self._static_out[name].copy_(value)
                else:
                    self._static_out[name] = value
        return self._static_out
