"""One metric sink: W&B and the run directory's files, written together, on rank 0 only.

Files in the run dir: ``metrics.jsonl`` (one record per log call, appended and flushed),
``metrics.csv`` (rewritten from the records at close), ``summary.json`` (atomically, at close).
W&B: ``mode`` is ``offline`` (default), ``online``, ``disabled`` or ``auto`` (online when an API key
is configured, else offline). A resumed run passes the stored run id and continues the same run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ikl.engine.checkpoint import last_good
from ikl.errors import UserError

log = logging.getLogger(__name__)


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


MODES = ("auto", "online", "offline", "disabled")


def resolve_wandb_mode(mode: str | None) -> str:
    """The W&B mode to run in. ``mode`` is ``logger.mode``: the config default is ``$WANDB_MODE``
    (else ``offline``), so the environment decides unless the command line names a mode."""
    mode = {"dryrun": "offline", "run": "online", None: "offline", "": "offline"}.get(mode, mode)
    if mode == "auto":
        return "online" if wandb_logged_in() else "offline"
    if mode not in MODES:
        from ikl.errors import ConfigError

        raise ConfigError(f"logger.mode={mode!r} is not one of {', '.join(MODES)} (or set WANDB_MODE)")
    return mode


def _plain(value: Any) -> Any:
    """A JSON-ready value: tensors as numbers, non-finite floats as the strings "nan", "inf", "-inf"."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder (fsync, ``os.replace``):
    a kill at any moment leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Strict JSON (no bare NaN/Infinity: they are written as strings), atomically."""
    text = json.dumps(_plain(payload), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text_atomic(path, text + "\n")


class MetricSink:
    """Log slash-namespaced metrics (``train/loss_wmse``, ``test/acc``) to files and W&B."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool = True,
        mode: str = "offline",
        project: str = "ikl",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        config: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self.wandb_run = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.records = self._read_existing()
        self.mode = resolve_wandb_mode(mode)
        if self.mode != "disabled":
            self._init_wandb(project, entity, name, group, tags, config, run_id)

    def _read_existing(self) -> list[dict[str, Any]]:
        if not self.jsonl_path.is_file():
            return []
        records = []
        for line in self.jsonl_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a damaged line in %s", self.jsonl_path)
        return records

    def _init_wandb(self, project, entity, name, group, tags, config, run_id) -> None:
        import wandb

        if os.environ.get("WANDB_MODE") == "":  # set but empty: W&B itself would reject it; the mode is given
            del os.environ["WANDB_MODE"]
        try:
            self.wandb_run = self._start_wandb(wandb, project, entity, name, group, tags, config, run_id)
        except Exception as exc:  # noqa: BLE001 - W&B's own errors (network, settings) as one line
            lines = str(exc).strip().splitlines()
            raise UserError(
                f"W&B could not start ({type(exc).__name__}: {lines[0] if lines else 'no details'}); "
                "use logger.mode=offline or logger.mode=disabled"
            ) from exc

    def _start_wandb(self, wandb, project, entity, name, group, tags, config, run_id):
        return wandb.init(
            project=project,
            entity=entity,
            name=name,
            group=group,
            tags=tags,
            config=dict(config or {}),
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(self.run_dir),  # as W&B users expect
            mode=self.mode,
            reinit="finish_previous",
        )

    @property
    def run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    @property
    def wandb_dir(self) -> str | None:
        return str(Path(self.wandb_run.dir).parent) if self.wandb_run is not None else None

    def truncate_after(self, epoch: int, step: int) -> None:
        """On resume: drop what was logged after the checkpoint (epoch ``epoch`` done, ``step``
        steps taken); those records will be written again by the resumed run."""
        if not self.enabled:
            return
        self.records = [
            r for r in self.records if r.get("step", 0) <= step and (r.get("epoch", 0) <= epoch or "test/acc" not in r)
        ]
        with open(self.jsonl_path, "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in self.records)
        self._bring_wandb_level()

    def _bring_wandb_level(self) -> None:
        """On resume: log to W&B every kept record it may lack (``metrics.jsonl`` is the source of truth).

        A hard kill can lose what W&B had not written yet. Offline, each attempt is a new file, so
        this attempt's holds every step; online, the server takes the steps from its resumed step on.
        """
        if self.wandb_run is None:
            return
        start = int(getattr(self.wandb_run, "starting_step", 0) or 0)
        replayed = [r for r in self.records if r.get("step", 0) >= start]
        for record in replayed:
            self._log_wandb(record)
        if replayed:
            log.info("W&B: replayed %d records of metrics.jsonl from step %d", len(replayed), start)

    def _log_wandb(self, record: Mapping[str, Any]) -> None:
        self.wandb_run.log({k: v for k, v in record.items() if not isinstance(v, str)}, step=int(record.get("step", 0)))

    def discard_earlier_attempt(self) -> None:
        """A fresh start: drop records that an earlier attempt in this run dir logged before it was
        killed without leaving a checkpoint (they would otherwise be logged twice)."""
        if not self.enabled or not self.records:
            return
        log.warning(
            "%s: dropping %d records of an earlier attempt that left no checkpoint", self.jsonl_path, len(self.records)
        )
        self.records = []
        self.jsonl_path.write_text("")

    def log(self, metrics: Mapping[str, Any], *, step: int, epoch: int) -> None:
        if not self.enabled:
            return
        record = {"epoch": epoch, "step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.records.append(record)
        try:
            with open(self.jsonl_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
        except OSError as exc:  # a full disk, a run dir gone read-only: one line, not a traceback
            raise UserError(
                f"could not append to {self.jsonl_path}: {exc.strerror or exc}; {last_good(self.run_dir / 'checkpoints' / 'last.pt')}"
            ) from exc
        if self.wandb_run is not None:
            self._log_wandb(record)

    def write_csv(self) -> None:
        keys: list[str] = []
        for record in self.records:
            keys += [k for k in record if k not in keys]
        with open(self.run_dir / "metrics.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.records)

    def summarize(self, summary: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / "summary.json", dict(summary))
        if self.wandb_run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str, bool)):
                    self.wandb_run.summary[key] = value

    def close(self, *, failed: bool = False) -> None:
        if not self.enabled:
            return
        if self.records:
            try:
                self.write_csv()
            except OSError as exc:  # derived from metrics.jsonl: never worth hiding the real error for
                log.warning("could not write %s: %s", self.run_dir / "metrics.csv", exc.strerror or exc)
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=1 if failed else 0)
            self.wandb_run = None
