"""Checkpoints: atomic writes, safe loads, and state_dict extraction from every known layout.

Writes go to a temporary file in the same directory, are fsync'ed and then ``os.replace``d, so a
kill or a full disk during a save leaves the previous checkpoint intact (PAPER.md §6.6). Loads
always use ``weights_only=True`` (§6.7): a pickle that would run code is refused, not executed.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ikl.errors import CheckpointError

FORMAT = "ikl-checkpoint"
# Test hook (reliability suite): seconds to sleep inside a save, after the temporary file is
# written and before it replaces the target, so a test can kill the process mid-save.
PAUSE_ENV = "IKL_TEST_PAUSE_IN_SAVE"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Atomically write ``state`` to ``path`` (temp file, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
        if os.environ.get(PAUSE_ENV):
            time.sleep(float(os.environ[PAUSE_ENV]))
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"could not write checkpoint {path}: {exc.strerror or exc}; the file there before was not replaced"
            ) from exc
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    return path


def _first_line(exc: Exception, limit: int = 160) -> str:
    lines = str(exc).splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _describe_bad_file(path: Path, exc: Exception) -> str:
    try:  # the first bytes only: a checkpoint may be gigabytes
        with open(path, "rb") as handle:
            head = handle.read(64).lstrip().lower()
        size = path.stat().st_size
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}; check the path and its permissions"
    if size == 0:
        return f"{path} is empty (0 bytes: an interrupted download or copy?); re-download or re-create it"
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<")):
        return f"{path} is an HTML/XML page, not a checkpoint (a failed download?); download it again"
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc).lower():
        return (
            f"refusing {path}: it contains objects that safe loading (weights_only=True) does not allow, "
            "so unpickling it could run code; re-save it as a plain state_dict from a trusted source"
        )
    if isinstance(exc, (zipfile.BadZipFile, EOFError, RuntimeError, pickle.UnpicklingError)):
        first = _first_line(exc, 120).split(". ")[0]
        return f"{path} is damaged or truncated ({type(exc).__name__}: {first}); re-download or re-create it"
    return f"could not load {path}: {type(exc).__name__}: {_first_line(exc)}"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); any problem is one ``CheckpointError`` line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint file; give the .pt file (e.g. {path / 'checkpoints' / 'last.pt'})"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():  # a plain (non-torch.save) pickle: its problem is the one line below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        raise CheckpointError(_describe_bad_file(path, exc)) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict or state_dict")
    return dict(obj)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(obj: Mapping[str, Any], key: str | None = None) -> dict[str, torch.Tensor]:
    """The model state_dict inside any known layout, with ``module.`` prefixes removed.

    Layouts: this project's (``model``), mdistiller/CRD teachers (``model`` beside ``epoch``,
    ``accuracy``, ``optimizer``), ``state_dict`` (RobustBench, many repos), ``net``, and a bare
    state_dict (the official DKL/TRADES ``.pt`` files, possibly saved from ``nn.DataParallel``).
    """
    candidates = [key] if key else ["model", "state_dict", "net", "model_state_dict"]
    found = obj if _is_state_dict(obj) else None
    for name in candidates:
        if found is None and name in obj and _is_state_dict(obj[name]):
            found = obj[name]
    if found is None:
        raise CheckpointError(f"no model state_dict found (keys: {sorted(obj)[:8]}); expected one of {candidates}")
    return strip_prefix(dict(found))


def strip_prefix(
    state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("module.", "_orig_mod.")
) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) prefixes."""
    out = {}
    for name, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if name.startswith(prefix):
                    name, changed = name[len(prefix) :], True
        out[name] = value
    return out


def key_mismatch(model: nn.Module, state_dict: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(missing keys, unexpected keys, "key (shape) vs (shape)" for each shape that differs)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != own[k].shape
    ]
    return missing, unexpected, wrong


def load_model_weights(
    model: nn.Module, source: str | os.PathLike | Mapping[str, Any], *, key: str | None = None, what: str = "model"
) -> dict[str, Any]:
    """Load weights strictly into ``model``; a mismatch is one line naming the file and the first problems.

    Returns the loaded container (for metadata such as ``accuracy`` or ``epoch``).
    """
    name = str(source) if not isinstance(source, Mapping) else "<state_dict>"
    container = load_checkpoint(source) if not isinstance(source, Mapping) else dict(source)
    state_dict = extract_state_dict(container, key)
    missing, unexpected, wrong = key_mismatch(model, state_dict)
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append(f"shape mismatch {wrong[:2]}")
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {unexpected[:3]}")
        raise CheckpointError(
            f"{name} does not fit the {what} ({type(model).__name__}): {'; '.join(parts)}; check the model name and num_classes"
        )
    model.load_state_dict(state_dict, strict=True)
    return container


def state_bytes(state: Mapping[str, Any]) -> bytes:
    """Serialise ``state`` to bytes (used to compare checkpoints in tests)."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def nonfinite_tensors(state: Any, where: str = "") -> list[str]:
    """The names of the floating-point tensors in a (nested) checkpoint state that hold NaN or Inf."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return [] if bool(torch.isfinite(state).all()) else [where or "<tensor>"]
        return []
    if isinstance(state, Mapping):
        return [
            name
            for key, value in state.items()
            for name in nonfinite_tensors(value, f"{where}.{key}" if where else str(key))
        ]
    if isinstance(state, (list, tuple)):
        return [name for i, value in enumerate(state) for name in nonfinite_tensors(value, f"{where}[{i}]")]
    return []


def last_good(path: Path) -> str:
    """What to say about the checkpoint a failed run leaves: checked (it loads, every tensor finite), not assumed."""
    if not path.is_file():
        return "no checkpoint had been written yet"
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        return f"the last checkpoint {path} could not be verified ({exc})"
    bad = nonfinite_tensors(state)
    if bad:
        return f"the last checkpoint {path} holds non-finite values ({bad[0]}): do not resume from it"
    return f"the last good checkpoint {path} (epoch {state.get('epoch')}) is intact (checked: it loads, all tensors finite)"
