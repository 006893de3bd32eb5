"""A NaN loss stops the run with one line, keeps the evidence, marks the W&B run failed, loses nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from ikl.cli import compose
from ikl.engine.checkpoint import load_checkpoint
from ikl.engine.distributed import DistInfo
from ikl.engine.trainer import set_epoch
from tests.reliability.helpers import Proc, isolated, job, kd_overrides, records
from tests.reliability.report import REPORT
from tests.runutils import compose_config
from tests.wandb_reader import exit_code

pytestmark = pytest.mark.slow

NAN_STEP = 6  # the 7th step: epoch 2, batch index 2 (4 steps per epoch)


def _overrides(teacher: Path) -> list[str]:
    return [o for o in kd_overrides(teacher) if not o.startswith("logger.")] + ["logger.mode=offline"]


@job("nan-run", priority=4)
def nan_run(tmp: Path, shared: dict) -> dict:
    run_dir = tmp / "run"
    args = [*_overrides(shared["teacher"]), *isolated(tmp), f"run_dir={run_dir}"]
    proc = Proc("train_kd.py", args, logs=tmp / "logs", env={"IKL_TEST_NAN_AT_STEP": str(NAN_STEP)})
    return {"run_dir": run_dir, "code": proc.finish(), "stderr": proc.stderr, "teacher": shared["teacher"]}


@pytest.mark.jobs("nan-run")
def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(jobs):
    result = jobs.get("nan-run")
    run_dir, stderr = result["run_dir"], result["stderr"]
    line = stderr.strip().splitlines()[-1]  # see the xfail test below for the lines before it
    assert result["code"] == 2 and "Traceback" not in stderr and line.startswith("error: "), stderr
    assert f"loss became non-finite at epoch 2, step {NAN_STEP} (batch 2)" in line
    assert "nonfinite_batch.json" in line and "is intact" in line

    # the offending batch: its indices are the samples the loader really put in that batch
    report = json.loads((run_dir / "nonfinite_batch.json").read_text())
    assert (report["epoch"], report["step"], report["batch_index"]) == (2, NAN_STEP, 2)
    assert {"loss", "loss_ce", "loss_wmse", "loss_sce"} <= set(report["terms"])
    cfg = compose_config("train_kd", _overrides(result["teacher"]))
    session = SimpleNamespace(dist=DistInfo(), device=torch.device("cpu"))
    datasets, train_loader, _ = compose.build_data(cfg, session)
    set_epoch(train_loader, 2)
    batches = iter(train_loader)
    for _ in range(report["batch_index"]):
        next(batches)
    labels = next(batches)[1].tolist()
    indices = report["sample_indices"]
    assert len(indices) == len(labels) == 16
    assert [int(datasets.train.targets[i]) for i in indices] == labels

    # the config, the last good checkpoint and the metrics so far are intact
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.loss.name == "ikl_gi" and config.trainer.epochs == 2
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and last["step"] == 4
    epochs = [r["epoch"] for r in records(run_dir) if "test/acc" in r]
    assert epochs == [1]

    # W&B: the offline run's exit record says it failed
    (events,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert exit_code(events) == 1

    REPORT.add(
        "numerics",
        f"IKL_TEST_NAN_AT_STEP={NAN_STEP}: the loss becomes NaN at epoch 2, batch 2 (train_kd.py, logger.mode=offline)",
        f"exit 2, ending in the line: {line}; nonfinite_batch.json holds epoch/step/batch, every loss term and the 16 sample "
        "indices (their labels match that batch's labels); config.yaml written; the offline W&B run's exit "
        "record has exit_code 1 (failed)",
        "yes: last.pt loads and is epoch 1 (step 4); metrics.jsonl keeps epoch 1's record",
    )


@pytest.mark.jobs("nan-run")
def test_nan_loss_message_is_the_only_stderr_output(jobs):
    stderr = jobs.get("nan-run")["stderr"]
    lines = stderr.strip().splitlines()
    REPORT.add(
        "numerics",
        "the same run: is the error line the only output on stderr?",
        "yes: stderr is exactly that one line" if len(lines) == 1 else f"no: {len(lines)} lines, starting {lines[0]}",
        "n/a",
    )
    assert len(lines) == 1, stderr
