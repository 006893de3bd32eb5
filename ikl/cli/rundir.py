"""A run directory belongs to one run: one configuration, one writer, nothing of a user's overwritten.

Files of this project in a run directory:

* ``run.json``, the identity marker: the task, a fingerprint of every resolved setting that changes
  what is trained, those settings, and one entry per attempt (start time, pid, host, command line,
  the allowed settings that changed). A directory without it is not an ikl run directory, and a
  non-empty one is never written to.
* ``run.lock``, held with ``fcntl.flock`` by the one process that writes the run (rank 0 under
  DDP) for the whole run. The kernel releases it on any exit, SIGKILL included, so a stale lock of a
  dead process never blocks a resume.

Every checkpoint carries the same identity (``checkpoint["identity"]``). ``resume`` compares it with
the new configuration: only the settings in :data:`MAY_CHANGE_ON_RESUME` may differ; anything else
is refused with one line naming each differing key. A changed continuation is a new run started
from the old weights: ``init_from=<run dir>/checkpoints/last.pt``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ikl.errors import ConfigError

MARKER = "run.json"
LOCK = "run.lock"
FORMAT = "ikl-run"
CHECKPOINT = Path("checkpoints") / "last.pt"

# Settings that may differ between the attempts of one run: where and how the run is watched and
# stored, and how far it goes, never what is computed. A pattern matches dotted keys (fnmatch).
MAY_CHANGE_ON_RESUME: tuple[str, ...] = (
    "trainer.epochs",  # extend a run (KD); IKL-AT's schedules depend on it, see TASK_FIXED
    "trainer.stop_after",
    "trainer.progress",
    "trainer.log_every",
    "trainer.finite_check_every",
    "trainer.save_every",
    "trainer.threads",  # the thread count it gives a CPU run is part of the identity (placement.cpu_threads)
    "trainer.device",  # the device *type* it resolves to is part of the identity (placement.device)
    "logger.*",
    "resume",
    "run_dir",
    "out_dir",
    "run_name",
    "compare_to_ce",  # AT: whether a CE baseline is trained beside the run, in its own run dir
    "init_from",  # identified by its SHA-256 (init_from.sha256)
    "teacher.checkpoint",  # the teacher is identified by its weights (teacher.state_sha256)
    "teacher.cache_dir",
    "teacher.auto_train_epochs",
    "teacher.seed",
    "teacher.expected_acc",
    "teacher.acc_tolerance",
    "dataset.builder.root",
    "dataset.builder.download",
    "dataset.builder.train_root",
    "dataset.builder.val_root",
)
# Facts about how a run started that its continuation need not repeat: a resume continues from its
# own last.pt, whatever became of the file it was initialised from.
RESUME_IGNORES = ("init_from.sha256",)
# Allowed above but fixed for a task: IKL-AT's eps ramp, cosine lr and weight-averaging start
# are functions of trainer.epochs, so a longer run is a different schedule from its first epoch.
TASK_FIXED: dict[str, tuple[str, ...]] = {"at": ("trainer.epochs",)}
MAX_NAME_BYTES = 200  # of one folder name (file systems allow 255)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _canonical(value: Any) -> Any:
    """One spelling per value, so ``4`` and ``4.0`` give the same fingerprint."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def may_change(key: str, task: str) -> bool:
    if key.startswith("hydra.") or key in TASK_FIXED.get(task, ()):
        return False
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_CHANGE_ON_RESUME)


@dataclass(frozen=True)
class RunIdentity:
    """What a run trains: its task and every resolved setting outside :data:`MAY_CHANGE_ON_RESUME`."""

    task: str
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, task: str, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> RunIdentity:
        """``config``: the resolved config; ``extra``: facts that are not settings (file hashes, placement)."""
        flat = {k: v for k, v in _flatten(config).items() if not k.startswith("hydra.") and not may_change(k, task)}
        flat.update(extra or {})
        flat = {k: _canonical(v) for k, v in flat.items()}
        # JSON round trip: the form it has in run.json and checkpoints (tuples become lists, keys sorted)
        return cls(task, json.loads(json.dumps(dict(sorted(flat.items())), default=str)))

    @property
    def fingerprint(self) -> str:
        blob = json.dumps({"task": self.task, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "fingerprint": self.fingerprint, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunIdentity:
        return cls(str(data["task"]), dict(data["settings"]))

    def differences(self, new: RunIdentity) -> list[tuple[str, Any, Any]]:
        """(key, old value, new value) for each setting that differs; absent keys read ``<unset>``."""
        keys = sorted(set(self.settings) | set(new.settings))
        unset = "<unset>"
        return [
            (k, self.settings.get(k, unset), new.settings.get(k, unset))
            for k in keys
            if self.settings.get(k, unset) != new.settings.get(k, unset)
        ]

    def resume_differences(self, new: RunIdentity) -> list[tuple[str, Any, Any]]:
        """:meth:`differences` that matter for continuing this run (not :data:`RESUME_IGNORES`)."""
        return [d for d in self.differences(new) if d[0] not in RESUME_IGNORES]


def placement_hint(diffs: list[tuple[str, Any, Any]]) -> str:
    """What to pass when a resume differs only in where it runs."""
    keys = {k for k, *_ in diffs}
    hints = []
    if "placement.cpu_threads" in keys:
        old = next(o for k, o, _ in diffs if k == "placement.cpu_threads")
        hints.append(f"trainer.threads={old}")
    if "placement.device" in keys:
        old = next(o for k, o, _ in diffs if k == "placement.device")
        hints.append(f"trainer.device={old}")
    if "placement.world_size" in keys:
        old = next(o for k, o, _ in diffs if k == "placement.world_size")
        hints.append(f"{old} process(es) (torchrun --nproc_per_node)")
    return f" (resume it with {' and '.join(hints)})" if hints else ""


def describe_differences(diffs: list[tuple[str, Any, Any]], limit: int = 8) -> str:
    """``key: old -> new; ...``; a key that only repeats another (``loss.criterion.x`` interpolating
    ``loss.x``: the same leaf, the same change) is left out."""
    kept = [
        (k, old, new)
        for k, old, new in diffs
        if not any(
            other != k
            and other.rsplit(".", 1)[-1] == k.rsplit(".", 1)[-1]
            and len(other) < len(k)
            and (o, n) == (old, new)
            for other, o, n in diffs
        )
    ]
    shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in kept[:limit])
    return shown + (f"; and {len(kept) - limit} more" if len(kept) > limit else "") + placement_hint(diffs)


def state_sha256(module: Any) -> str:
    """SHA-256 of a model's state_dict (names, dtypes, shapes, values): the weights whatever file,
    hub cache or builder they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------ inspecting
@dataclass(frozen=True)
class RunDirState:
    """What a directory holds, read without writing anything."""

    path: Path
    exists: bool
    empty: bool
    marker: dict[str, Any] | None  # run.json, when it is an ikl run directory
    has_checkpoint: bool

    @property
    def is_run(self) -> bool:
        return self.marker is not None

    @property
    def identity(self) -> RunIdentity | None:
        return RunIdentity.from_dict(self.marker["identity"]) if self.marker else None


def _ours_only(path: Path) -> bool:
    """Empty, or holding nothing but a lock file (a process that was refused right after locking)."""
    return all(p.name == LOCK for p in path.iterdir())


def inspect(path: Path) -> RunDirState:
    """The state of ``path``; a damaged ``run.json`` is one line, not a guess."""
    if not path.exists():
        return RunDirState(path, False, True, None, False)
    if not path.is_dir():
        raise ConfigError(f"run dir {path} is a file, not a directory; choose another run_dir")
    marker = None
    if (path / MARKER).is_file():
        try:
            marker = json.loads((path / MARKER).read_text())
            RunIdentity.from_dict(marker["identity"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path / MARKER} is damaged ({type(exc).__name__}); the run dir is left as it is: "
                "repair or remove the file, or choose another run_dir"
            ) from exc
        if marker.get("format") != FORMAT:
            raise ConfigError(f"{path / MARKER} is not an ikl run marker; choose another run_dir")
    return RunDirState(path, True, _ours_only(path), marker, (path / CHECKPOINT).is_file())


def check_not_foreign(state: RunDirState) -> None:
    if state.exists and not state.empty and not state.is_run:
        raise ConfigError(
            f"{state.path} is not empty and is not an ikl run directory (no {MARKER}); its files are left "
            "untouched: choose another run_dir (an empty or new folder)"
        )


def check_identity(state: RunDirState, identity: RunIdentity, *, resuming: bool) -> None:
    """Refuse to continue or restart ``state`` with a configuration other than its own."""
    old = state.identity
    assert old is not None
    if old.task != identity.task:
        raise ConfigError(
            f"{state.path} is a {TASK_NAMES.get(old.task, old.task)} run; it cannot be "
            f"{'resumed' if resuming else 'restarted'} by {TASK_NAMES.get(identity.task, identity.task)}: "
            "choose another run_dir"
        )
    diffs = old.resume_differences(identity) if resuming else old.differences(identity)
    if not diffs:
        return
    action = "resume refused" if resuming else "refused"
    hint = (
        f"resume with the run's own settings, or start a new run from its weights with "
        f"init_from={state.path / CHECKPOINT} (see MAY_CHANGE_ON_RESUME in ikl/cli/rundir.py for what may change)"
        if resuming
        else "choose another run_dir"
    )
    raise ConfigError(f"{action}: {state.path} was started with other settings: {describe_differences(diffs)}; {hint}")


TASK_NAMES = {"kd": "train_kd.py (knowledge distillation)", "at": "train_at.py (adversarial training)"}


def find_runs(
    base: Path, identity: RunIdentity, max_depth: int = 4, accept: Callable[[RunDirState], bool] | None = None
) -> tuple[list[Path], list[tuple[Path, list]]]:
    """Run dirs below ``base`` with a checkpoint: (those of ``identity`` that ``accept`` takes, newest
    first; the others of the same task with their differences)."""
    matches, others = [], []
    for depth in range(1, max_depth + 1):
        for marker in base.glob("/".join(["*"] * depth) + f"/{MARKER}"):
            run = marker.parent
            try:
                state = inspect(run)
            except ConfigError:
                continue
            if not state.has_checkpoint or state.identity is None or state.identity.task != identity.task:
                continue
            diffs = state.identity.resume_differences(identity)
            if not diffs and (accept is None or accept(state)):
                matches.append(run)
            elif diffs:
                others.append((run, diffs))
    matches.sort(key=lambda p: (p / CHECKPOINT).stat().st_mtime_ns, reverse=True)
    others.sort(key=lambda item: len(item[1]))
    return matches, others


# --------------------------------------------------------------------------------------- locking
class RunLock:
    """An exclusive ``flock`` on ``<run dir>/run.lock``, held until :meth:`release` or process exit."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another live process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        self.fd = fd
        return True

    def write_holder(self) -> None:
        assert self.fd is not None
        text = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}\n"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def holder(self) -> str:
        with contextlib.suppress(OSError):
            text = self.path.read_text().strip()
            if text:
                return text
        return "another process"

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def busy(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s lock, when a live process does (read-only: nothing is written)."""
    path = run_dir / LOCK
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return RunLock(run_dir).holder()
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return None


def check_not_busy(run_dir: Path) -> None:
    holder = busy(run_dir)
    if holder:
        raise ConfigError(
            f"{run_dir} is in use by {holder}; one run dir has one writer: wait for it to finish, or choose another run_dir"
        )


# ------------------------------------------------------------------------------------- the plan
@dataclass
class RunPlan:
    """Where a run goes and what it continues, decided before anything is written."""

    run_dir: Path
    identity: RunIdentity
    resume_from: Path | None = None  # the checkpoint to continue
    explicit: bool = True  # the user named the directory (no fresh sibling on a collision)
    restart: bool = False  # an ikl run dir of this identity without a checkpoint: start it again
    note: str | None = None  # what to tell the user about the choice
    checkpoint_stamp: tuple[int, int] | None = None  # (size, mtime) of resume_from when planned


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def default_run_dir(out_dir: Path, run_name: str) -> Path:
    return out_dir / run_name / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def folder_name(run_name: str) -> str:
    """The run name as one folder name: a ``/`` (``timm/convnext_tiny``, an experiment path) becomes ``_``."""
    return run_name.replace("/", "_")


def check_run_name(run_name: str) -> None:
    run_name = folder_name(run_name)
    size = len(run_name.encode())
    if not run_name.strip() or run_name in (".", ".."):
        raise ConfigError(f"run_name={run_name!r} must be a non-empty folder name")
    if size > MAX_NAME_BYTES:
        raise ConfigError(
            f"run_name is {size} bytes long, more than the {MAX_NAME_BYTES} a folder name may have here; "
            "set a shorter run_name=..."
        )


def plan_run(
    *,
    identity: RunIdentity,
    resume: Any,
    run_dir: str | None,
    default_dir: Path,
    out_dir: Path,
    accept: Callable[[RunDirState], bool] | None = None,
) -> RunPlan:
    """Decide the run dir and the checkpoint to resume from, reading but never writing.

    ``resume``: false (a new run), true (the newest run of this identity under ``out_dir`` that
    ``accept`` takes; with an explicit ``run_dir``, that directory), a run dir, or a checkpoint file
    inside one.
    """
    if resume in (False, None, "false", "False"):
        return _plan_fresh(identity, Path(run_dir) if run_dir else None, default_dir)
    if resume in (True, "true", "True"):
        if run_dir:
            return _plan_resume_in(Path(run_dir), identity, named=f"run_dir={run_dir}")
        return _plan_find(identity, default_dir, out_dir, accept)
    return _plan_resume_path(Path(str(resume)), identity, run_dir)


def _plan_fresh(identity: RunIdentity, run_dir: Path | None, default_dir: Path) -> RunPlan:
    if run_dir is None:
        return RunPlan(default_dir, identity, explicit=False)
    state = inspect(run_dir)
    check_not_foreign(state)
    check_not_busy(run_dir)
    if state.is_run:
        if state.has_checkpoint:
            raise ConfigError(
                f"{run_dir} already holds a run with a checkpoint; continue it with resume=true, or choose another run_dir"
            )
        check_identity(state, identity, resuming=False)
        return RunPlan(run_dir, identity, restart=True, note="restarting a run that left no checkpoint")
    return RunPlan(run_dir, identity)


def _plan_resume_in(run_dir: Path, identity: RunIdentity, *, named: str, checkpoint: Path | None = None) -> RunPlan:
    state = inspect(run_dir)
    check_not_foreign(state)
    check_not_busy(run_dir)
    if not state.is_run:  # new or empty: nothing to continue yet, the run starts there
        return RunPlan(run_dir, identity, note=f"{run_dir} holds no run yet: starting it there")
    check_identity(state, identity, resuming=True)
    checkpoint = checkpoint or run_dir / CHECKPOINT
    if not checkpoint.is_file():
        if checkpoint != run_dir / CHECKPOINT:
            raise ConfigError(f"{named}: no checkpoint at {checkpoint}")
        return RunPlan(run_dir, identity, restart=True, note="the run left no checkpoint: starting it again")
    # the run's own identity (it may hold facts a continuation need not repeat: RESUME_IGNORES)
    return RunPlan(run_dir, state.identity, resume_from=checkpoint, checkpoint_stamp=_stamp(checkpoint))


def _plan_find(identity: RunIdentity, default_dir: Path, out_dir: Path, accept) -> RunPlan:
    matches, others = find_runs(out_dir, identity, accept=accept) if out_dir.is_dir() else ([], [])
    if matches:
        return _plan_resume_in(matches[0], identity, named="resume=true")
    note = f"resume=true: no run under {out_dir} has this configuration; starting a new one"
    if others:
        closest, diffs = others[0]
        note += f" (the closest, {closest}, differs in {describe_differences(diffs, limit=3)})"
    return RunPlan(default_dir, identity, explicit=False, note=note)


def _plan_resume_path(target: Path, identity: RunIdentity, run_dir: str | None) -> RunPlan:
    named = f"resume={target}"
    if target.is_file():  # <run>/checkpoints/<name>.pt: a stray file must not make its grandparent a run dir
        run = target.absolute().parent.parent
        if target.absolute().parent.name != "checkpoints" or not (run / MARKER).is_file():
            raise ConfigError(
                f"{named}: the file is not inside a run directory (<run>/checkpoints/last.pt beside <run>/{MARKER}); "
                "pass the run directory (resume=<run dir>) or resume=true"
            )
        plan = _plan_resume_in(run, identity, named=named, checkpoint=target.absolute())
    elif target.is_dir():
        if not (target / MARKER).is_file():
            raise ConfigError(f"{named}: {target} is not an ikl run directory (no {MARKER}); pass a run dir")
        plan = _plan_resume_in(target, identity, named=named)
        if plan.resume_from is None:
            raise ConfigError(f"{named}: no checkpoint at {target / CHECKPOINT}; pass a run dir that has one")
    else:
        raise ConfigError(f"{named}: no such run dir or checkpoint file")
    if run_dir and Path(run_dir).absolute() != plan.run_dir.absolute():
        raise ConfigError(f"{named} is in {plan.run_dir} but run_dir={run_dir}; give one of the two")
    return plan


# ------------------------------------------------------------------------------------- claiming
@dataclass
class ClaimedRun:
    run_dir: Path
    lock: RunLock
    marker: dict[str, Any]

    def release(self) -> None:
        self.lock.release()


def _writable(path: Path) -> None:
    for folder in (path, path / "checkpoints"):
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(
                f"cannot write to {folder} (permission denied); make it writable or choose another run_dir"
            )


def claim(plan: RunPlan, *, argv: Iterable[str] | None = None, attempt: Mapping[str, Any] | None = None) -> ClaimedRun:
    """Become the one writer of ``plan.run_dir``: lock it, check again that it is as planned, write ``run.json``.

    A directory the user did not name (the time-stamped default) that another run took in the same
    second gives way to a fresh sibling (``<dir>-1``, ``-2``, ...); a named one is refused.
    """
    run_dir = plan.run_dir
    for suffix in range(100):
        candidate = run_dir if suffix == 0 else run_dir.with_name(f"{run_dir.name}-{suffix}")
        claimed = _try_claim(candidate, plan, argv=argv, attempt=attempt)
        if claimed is not None:
            return claimed
    raise ConfigError(f"could not find a free run dir next to {run_dir}; choose a run_dir")


def _try_claim(run_dir: Path, plan: RunPlan, *, argv, attempt) -> ClaimedRun | None:
    fresh_default = not plan.explicit and plan.resume_from is None
    state = inspect(run_dir)
    if fresh_default and state.exists and not state.empty:
        return None  # taken: a fresh sibling
    check_not_foreign(state)
    _writable(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run dir {run_dir}: {exc.strerror or exc}; choose a writable run_dir"
        ) from exc
    lock = RunLock(run_dir)
    try:
        locked = lock.acquire()
    except OSError as exc:
        raise ConfigError(f"cannot lock {lock.path}: {exc.strerror or exc}; choose a writable run_dir") from exc
    if not locked:
        if fresh_default:
            return None
        check_not_busy(run_dir)  # says who holds it
        raise ConfigError(f"{run_dir} is in use by another process; choose another run_dir")
    try:
        _check_unchanged(run_dir, plan, fresh_default)
        marker = _write_marker(run_dir, plan, argv=argv, attempt=attempt)
        lock.write_holder()
    except BaseException:
        lock.release()
        raise
    return ClaimedRun(run_dir, lock, marker)


def _check_unchanged(run_dir: Path, plan: RunPlan, fresh_default: bool) -> None:
    """Under the lock: the directory is still what :func:`plan_run` saw (no run slipped in meanwhile)."""
    state = inspect(run_dir)
    if plan.resume_from is not None:
        if not plan.resume_from.is_file() or _stamp(plan.resume_from) != plan.checkpoint_stamp:
            raise ConfigError(f"{plan.resume_from} changed while this run was starting; run the command again")
        return
    if state.has_checkpoint or (state.is_run and state.identity != plan.identity):
        raise ConfigError(f"another run wrote to {run_dir} while this one was starting; choose another run_dir")
    if not fresh_default and state.exists and not state.empty and not state.is_run:
        check_not_foreign(state)


def _write_marker(run_dir: Path, plan: RunPlan, *, argv, attempt) -> dict[str, Any]:
    from ikl.engine.sink import write_json_atomic

    old = inspect(run_dir).marker
    now = datetime.now().isoformat(timespec="seconds")
    entry = {
        "started": now,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "argv": list(sys.argv if argv is None else argv),
        "resumed_from": str(plan.resume_from) if plan.resume_from else None,
        **dict(attempt or {}),
    }
    if old is None or plan.restart:
        marker = {"format": FORMAT, "created": now, "identity": plan.identity.to_dict(), "attempts": [entry]}
    else:
        marker = {**old, "attempts": [*old.get("attempts", []), entry]}
    write_json_atomic(run_dir / MARKER, marker)
    return marker
