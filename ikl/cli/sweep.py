"""Hydra multiruns: one bad job never stops a sweep, and every sweep ends with one table over its jobs.

The policy (documented in the README): every job runs. A job that fails (a bad value in one of
its overrides, a missing file, a diverging run) prints its one line and is recorded; the other jobs
still run to the end. After the last job the sweep prints a table of all jobs (the swept values as
columns, last/best accuracy, status, run dir), writes it as ``sweep_summary.md`` and ``.csv`` into
the sweep dir, and the command exits with status 1 when any job failed (0 otherwise). A SIGTERM or
SIGINT stops the whole sweep at once (exit 128 + signal), as for a single run.

Jobs report through a file each (``<sweep dir>/jobs/<num>.json``), so launchers that run jobs in
other processes (joblib, submitit) report the same way as Hydra's basic launcher.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ikl.cli.overrides import parse

log = logging.getLogger(__name__)
KEYS_ENV = "IKL_SWEEP_KEYS"  # the swept keys, set by the launching process for its jobs
ID_ENV = "IKL_SWEEP_ID"
JOBS = "jobs"
RESULT_COLUMNS = ("status", "acc_last", "acc_best", "test_pgd_acc_last", "run_dir", "error")


def in_multirun() -> bool:
    try:
        mode = HydraConfig.get().mode
    except ValueError:  # not under Hydra (tests compose with the compose API)
        return False
    return mode is not None and mode.name == "MULTIRUN"


def sweep_group() -> str | None:
    """The W&B group of a multirun's jobs: the sweep dir's name."""
    return Path(HydraConfig.get().sweep.dir).name if in_multirun() else None


def swept_keys(hydra_cfg: DictConfig) -> list[str]:
    """The keys a multirun varies: sweeps on the command line and ``hydra.sweeper.params``."""
    keys = [o.key_or_group for o in parse(list(hydra_cfg.overrides.task)) if o.is_sweep_override()]
    params = hydra_cfg.get("sweeper", {}).get("params") or {}
    return list(dict.fromkeys([*keys, *params]))


def job_values() -> dict[str, str]:
    """This job's value of every swept key (from its overrides)."""
    keys = json.loads(os.environ.get(KEYS_ENV, "[]"))
    values = {}
    for override in parse(list(HydraConfig.get().overrides.task)):
        if override.key_or_group in keys:
            values[override.key_or_group] = override.get_value_element_as_str()
    return values


def job_run_name(run_name: str) -> str:
    """In a multirun, ``run_name`` plus the swept values it does not show already."""
    if not in_multirun():
        return run_name
    tokens = set(run_name.split("-"))
    parts = []
    for key, value in job_values().items():
        text = re.sub(r"[^A-Za-z0-9_.=-]+", "_", f"{key.rsplit('.', 1)[-1]}={value}")
        shown = re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(value))
        if shown not in tokens and text not in tokens:  # a whole token of the name, not a substring
            parts.append(text)
    return "-".join([run_name, *parts])


def job_tag() -> dict[str, Any]:
    """This job's sweep id and number (recorded with each attempt in run.json), {} outside a multirun."""
    if not in_multirun():
        return {}
    return {"sweep_id": os.environ.get(ID_ENV), "job": int(HydraConfig.get().job.num), "swept": job_values()}


def claimed_by_another_job(attempt: dict[str, Any]) -> bool:
    """Whether a run's latest attempt belongs to another job of the running sweep (resume=true in a
    sweep must never continue a run a sibling job has just taken)."""
    tag = job_tag()
    return bool(tag) and attempt.get("sweep_id") == tag["sweep_id"] and attempt.get("job") != tag["job"]


def record_job(status: str, *, summary: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Write this job's outcome into the sweep dir (no-op outside a multirun)."""
    if not in_multirun():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.sweep.dir) / JOBS / str(os.environ.get(ID_ENV) or "unknown-sweep")
    record = {
        "sweep_id": os.environ.get(ID_ENV),
        "num": int(hydra_cfg.job.num),
        "overrides": list(hydra_cfg.overrides.task),
        "swept": job_values(),
        "status": status,
        "error": error,
        "summary": summary or {},
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{record['num']}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    except OSError as exc:  # the job's own outcome is already printed; the table then lacks a row
        log.warning("could not record job %s in %s: %s", record["num"], folder, exc.strerror or exc)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def read_jobs(sweep_dir: Path, sweep_id: str | None) -> list[dict[str, Any]]:
    """This sweep's job records (``jobs/<sweep id>/<num>.json``; another sweep in the same dir keeps its own)."""
    folder = sweep_dir / JOBS / str(sweep_id or "unknown-sweep")
    records = []
    for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            records.append({"num": int(path.stem) if path.stem.isdigit() else -1, "status": "unreadable record"})
    return records


def sweep_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): job number, each swept key, the results, status, run dir."""
    keys = list(dict.fromkeys(k for r in records for k in r.get("swept", {})))
    results = [c for c in RESULT_COLUMNS if any(c in r.get("summary", {}) or c in r for r in records)]
    header = ["job", *keys, *results]
    rows = []
    for r in records:
        summary = {**r.get("summary", {}), "status": r.get("status"), "error": r.get("error")}
        rows.append(
            [str(r["num"]), *(r.get("swept", {}).get(k, "") for k in keys), *(_fmt(summary.get(c)) for c in results)]
        )
    return header, rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class SweepReport(Callback):
    """Hydra callback (``hydra.callbacks.sweep_report`` in the primary configs)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[KEYS_ENV] = json.dumps(swept_keys(config.hydra))
        os.environ[ID_ENV] = uuid.uuid4().hex

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A job that never reports (killed, or a launcher error) shows as "did not finish"."""
        if in_multirun():
            record_job("did not finish")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = read_jobs(sweep_dir, os.environ.get(ID_ENV))
        if not records:
            return
        header, rows = sweep_table(records)
        text = markdown(header, rows)
        try:
            own = sweep_dir / JOBS / str(os.environ.get(ID_ENV) or "unknown-sweep")  # kept if another sweep follows
            for folder in (sweep_dir, own):
                (folder / "sweep_summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n{text}")
            with open(sweep_dir / "sweep_summary.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([header, *rows])
        except OSError as exc:
            log.warning("could not write the sweep table into %s: %s", sweep_dir, exc.strerror or exc)
        failed = [r for r in records if r.get("status") != "completed"]
        sys.stdout.write(f"\nsweep {sweep_dir} ({len(records)} jobs, {len(failed)} failed):\n{text}")
        sys.stdout.flush()
        if failed:
            sys.stderr.write(
                f"error: {len(failed)} of {len(records)} jobs failed; see {sweep_dir / 'sweep_summary.md'}\n"
            )
            sys.exit(1)
