"""Class-wise global information (GI, paper Eq. 9): the C×C class-wise mean-softmax prior."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ikl.errors import ConfigError

# name -> (dtype, shape as a function of C) of the lazily allocated state
_STATE = {
    "prior": (torch.float32, lambda c: (c, c)),
    "sums": (torch.float64, lambda c: (c, c)),
    "counts": (torch.float64, lambda c: (c,)),
}
# softmax(z/τ) of this many values at a time in ``update`` (its float64 temporary stays bounded)
_UPDATE_ELEMENTS = 1 << 18


def prior_memory_bytes(num_classes: int) -> int:
    """Bytes a ``ClassPrior`` holds once fed and rebuilt: 4·C² (prior) + 8·C² (sums) + 8·C (counts)."""
    return 12 * num_classes * num_classes + 8 * num_classes


def _host_memory(field: str) -> int | None:
    """``MemTotal``/``MemAvailable`` of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "MemTotal" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _largest_memory() -> int | None:
    """The most memory any device here could offer: host RAM or the largest CUDA device."""
    sizes = [_host_memory("MemTotal")]
    if torch.cuda.is_available():
        sizes += [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    known = [s for s in sizes if s]
    return max(known) if known else None


def _available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (None where unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    if device.type == "cpu":
        return _host_memory("MemAvailable")
    return None


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


class ClassPrior(nn.Module):
    """Row c holds the mean over class-c samples of softmax(z/τ), rebuilt once per epoch.

    As the official code (PAPER.md §0.6, §1.4, §1.5): uniform 1/C before the first ``step``;
    ``update`` accumulates during an epoch; ``step`` at its end row-normalises the sums and swaps
    them in (``momentum`` = official AT ``--m``, 1.0 = replace wholesale). Unlike the official code
    a class unseen in an epoch keeps its previous row instead of becoming NaN, statistics are
    all-reduced under ``torch.distributed`` (instead of DataParallel-replicated), and prior plus
    accumulator live in ``state_dict`` so a resume continues exactly.

    **Memory.** GI needs a C×C table (one weight vector per class): that is inherent to the
    method, not to this code. The state is allocated lazily, on the module's device: the float64
    accumulator ``sums`` (8·C² bytes) and ``counts`` at the first ``update``, the float32 ``prior``
    (4·C² bytes) at the first ``step`` that saw a sample; before that the prior is uniform and
    costs nothing (``table()`` is None). In all 12·C² bytes: 1.2 MB at C = 100, 12 MB at C = 1000,
    1.2 GB at C = 10⁴, 12.3 GB at C = 32 000. A size that no device here could hold is refused at
    construction, and an allocation that would not fit in the memory still available is refused
    when it happens, each with one ``ConfigError`` line.

    The sums are float64 on purpose: they add up an epoch of softmax rows per class (over a
    thousand for ImageNet); in float32 the rounding would grow with that count and depend on the
    batch order and on how DDP shards the data, while float64 keeps the row-normalised float32
    prior independent of both. The prior is read every step and is float32 (it is a
    stop-gradient weight; float64 losses convert its rows exactly).

    Reading ``.prior``, ``.sums`` or ``.counts`` allocates them (uniform, zeros, zeros).
    ``state_dict`` holds what is allocated; ``load_state_dict`` accepts any subset of the three
    (a missing one is reset to unallocated), so checkpoints of earlier versions, which always held
    all three, load unchanged.
    """

    def __init__(self, num_classes: int, *, temperature: float = 1.0, momentum: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if temperature <= 0:
            raise ValueError(f"prior temperature must be > 0, got {temperature}")
        if not 0 < momentum <= 1:
            raise ValueError(f"prior momentum must be in (0, 1], got {momentum}")
        need, largest = prior_memory_bytes(num_classes), _largest_memory()
        if largest is not None and need > largest:
            raise ConfigError(
                f"the class prior of GI needs {_gib(need)} for {num_classes} classes (12·C² bytes), more than "
                f"any device here has ({_gib(largest)}); turn GI off (class_wise=false) for this many classes"
            )
        self.num_classes = num_classes
        self.temperature = temperature
        self.momentum = momentum
        # follows .to(device); the lazily allocated state is created where it is
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        for name in _STATE:
            self.register_buffer(name, None)

    # ------------------------------------------------------------------ lazy state
    def __getattr__(self, name: str):
        if name in _STATE:
            buffers = self.__dict__.get("_buffers", {})
            if name in buffers and buffers[name] is None:
                return self._allocate(name)
        return super().__getattr__(name)

    def is_allocated(self, name: str) -> bool:
        return self._buffers[name] is not None

    def _allocate(self, name: str) -> Tensor:
        dtype, shape = _STATE[name]
        shape = shape(self.num_classes)
        device = self._anchor.device
        need = torch.Size(shape).numel() * dtype.itemsize
        if need >= 1 << 26:  # check only what could matter (≥ 64 MiB)
            available = _available_memory(device)
            if available is not None and need > available:
                raise ConfigError(
                    f"the class prior of GI cannot allocate its {name} ({_gib(need)}; 12·C² bytes in all for "
                    f"{self.num_classes} classes) "
                    f"on {device}: only {_gib(available)} is free; free memory or turn GI off (class_wise=false)"
                )
        if name == "prior":
            value = torch.full(shape, 1.0 / self.num_classes, dtype=dtype, device=device)
        else:
            value = torch.zeros(shape, dtype=dtype, device=device)
        self._buffers[name] = value
        return value

    def table(self) -> Tensor | None:
        """The C×C prior, or None while it is still uniform and unallocated."""
        return self._buffers["prior"]

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        for name, (_, shape) in _STATE.items():
            key = prefix + name
            if key not in state_dict:
                self._buffers[name] = None
                continue
            value = state_dict.pop(key)
            expected = torch.Size(shape(self.num_classes))
            if value.shape != expected:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)}, "
                    f"the shape in current model is {tuple(expected)}."
                )
                continue
            with torch.no_grad():
                (self._buffers[name] if self.is_allocated(name) else self._allocate(name)).copy_(value)
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix))

    # ------------------------------------------------------------------ the prior
    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        """Add softmax(logits/τ) of each sample to its class's running sum.

        The softmax is computed in float32 (float64 logits: float64) and added to the float64
        sums: each row is then exact to float32 rounding, as the float32 prior it becomes.
        """
        sums, counts = self.sums, self.counts  # allocated at the first call
        if labels.device != sums.device:
            labels = labels.to(sums.device)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        rows = max(1, _UPDATE_ELEMENTS // self.num_classes)
        batch = labels.shape[0]
        for start in range(0, batch, rows):
            chunk = logits if batch <= rows else logits[start : start + rows]
            index = labels if batch <= rows else labels[start : start + rows]
            if chunk.dtype != dtype:
                chunk = chunk.to(dtype)
            probs = F.softmax(chunk if self.temperature == 1.0 else chunk * (1.0 / self.temperature), dim=1)
            sums.index_add_(0, index, probs.to(device=sums.device, dtype=sums.dtype))
        # index_add_, not bincount: bincount's output size depends on the labels' values, which makes
        # the host wait for the device every step and cannot be captured in a CUDA graph
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))

    @torch.no_grad()
    def step(self) -> None:
        """End of epoch: all-reduce, row-normalise, swap in, reset the accumulator."""
        distributed = dist.is_available() and dist.is_initialized()
        if not self.is_allocated("sums") and not distributed:
            return  # nothing was observed: the prior stays as it is
        sums, counts = self.sums.clone(), self.counts.clone()
        if distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        seen = counts > 0
        if bool(seen.any()):
            prior = self.prior
            new_rows = (sums[seen] / sums[seen].sum(dim=1, keepdim=True)).to(prior.dtype)
            prior[seen] = self.momentum * new_rows + (1 - self.momentum) * prior[seen]
        self.sums.zero_()
        self.counts.zero_()

    def weights(self, labels: Tensor) -> Tensor:
        """[B, C]: the prior row of each label (uniform rows before the prior is first built)."""
        table = self.table()
        if table is None:
            return torch.full((labels.shape[0], self.num_classes), 1.0 / self.num_classes, device=labels.device)
        return table[labels]
