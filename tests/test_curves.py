"""ikl.engine.curves: curves.png of a run from its metrics.jsonl (the data of each panel, and a real PNG)."""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from ikl.engine import curves
from ikl.engine.curves import curve_panels, plot_run_curves, read_metrics, write_curves
from tests.runutils import ROOT


def kd_records(epochs: int = 3, steps_per_epoch: int = 4, log_every: int = 2) -> list[dict]:
    """What MetricSink writes for a KD run: the teacher's accuracy, step records, epoch records."""
    records: list[dict] = [{"epoch": 0, "step": 0, "teacher/acc": 97.5}]
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            if step % log_every == 0:
                records.append({"epoch": epoch, "step": step, "train/loss_step": 5.0 / step, "train/lr": 0.1 / epoch})
        records.append(
            {
                "epoch": epoch,
                "step": step,
                "train/loss_ce": 2.0 / epoch,
                "train/loss_wmse": 0.5 / epoch,
                "train/loss_sce": 1.0 / epoch,
                "train/loss": 3.5 / epoch,
                "train/acc": 50.0 + epoch,
                "train/lr": 0.1 / epoch,
                "time/epoch": 1.0,
                "train/images_per_s": 100.0,
                "test/acc": 60.0 + epoch,
                "test/acc_top5": 90.0,
                "test/n": 32,
            }
        )
    return records


def at_records(epochs: int = 4) -> list[dict]:
    """An AT run: the PGD monitor every epoch, the epoch EMA from epoch 1, the iteration EMA from
    epoch 3, and the EMA models' PGD accuracy after the last epoch."""
    records = []
    for epoch in range(1, epochs + 1):
        record = {
            "epoch": epoch,
            "step": 10 * epoch,
            "train/loss_ce": 2.0,
            "train/loss_wmse": 0.2,
            "train/loss_sce": 0.3,
            "train/loss": 2.5,
            "train/acc": 30.0 + epoch,
            "train/lr": 0.1,
            "test/acc": 40.0 + epoch,
            "test/pgd_acc": 20.0 + epoch,
            "test/pgd_n": 16,
            "test/ema_epoch_acc": 41.0 + epoch,
        }
        if epoch >= 3:
            record["test/ema_iter_acc"] = 42.0 + epoch
        if epoch == epochs:
            record.update({"test/ema_epoch_pgd_acc": 26.0, "test/ema_iter_pgd_acc": 27.0})
        records.append(record)
    return records


def write_metrics(run_dir: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return run_dir


def panels_by_title(records) -> dict[str, curves.Panel]:
    return {p.title: p for p in curve_panels(records)}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# ----------------------------------------------------------------------------- the data of each panel
def test_kd_run_has_loss_terms_accuracies_and_lr():
    panels = panels_by_title(kd_records())
    assert list(panels) == ["loss", "accuracy", "learning rate"]  # no PGD panel for KD
    loss = panels["loss"].series
    assert set(loss) == {"loss_ce", "loss_wmse", "loss_sce", "loss (total)", "loss (per step)"}
    assert loss["loss_wmse"] == ([1.0, 2.0, 3.0], [0.5, 0.25, 0.5 / 3])
    acc = panels["accuracy"].series
    assert acc["train"] == ([1.0, 2.0, 3.0], [51.0, 52.0, 53.0])
    assert acc["test"] == ([1.0, 2.0, 3.0], [61.0, 62.0, 63.0])
    assert acc["teacher (test)"] == ([0.0, 3.0], [97.5, 97.5])
    assert "test/acc_top5" not in acc and "top5" not in " ".join(acc)
    # step records at their fraction of the epoch (4 steps per epoch: steps 2, 4, 6, ... -> 0.5, 1.0, 1.5, ...)
    xs, ys = loss["loss (per step)"]
    assert xs == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0] and ys[0] == 2.5
    assert panels["learning rate"].series["lr"][0] == xs  # the per-step lr, finer than the epoch's


def test_at_run_adds_the_pgd_monitor_and_the_ema_models():
    panels = panels_by_title(at_records())
    assert list(panels) == ["loss", "accuracy", "robust accuracy (PGD)", "learning rate"]
    acc = panels["accuracy"].series
    assert set(acc) == {"train", "test", "test, epoch EMA", "test, iteration EMA"}
    assert acc["test, iteration EMA"] == ([3.0, 4.0], [45.0, 46.0])
    robust = panels["robust accuracy (PGD)"].series
    assert robust["test, PGD monitor"] == ([1.0, 2.0, 3.0, 4.0], [21.0, 22.0, 23.0, 24.0])
    assert robust["epoch EMA, PGD"] == ([4.0], [26.0]) and robust["iteration EMA, PGD"] == ([4.0], [27.0])
    assert "test/pgd_n" not in str(panels)
    assert panels["learning rate"].series["lr"] == ([1.0, 2.0, 3.0, 4.0], [0.1] * 4)  # no step records: per epoch


def test_nan_and_inf_strings_become_gaps_marked_where_they_start(tmp_path):
    records = kd_records()
    records[-1]["train/loss_wmse"] = "nan"
    records[-1]["train/loss"] = "inf"
    records[-1]["test/acc"] = "-inf"
    panels = panels_by_title(records)
    wmse = panels["loss"].series["loss_wmse"][1]
    assert wmse[:2] == [0.5, 0.25] and math.isnan(wmse[2])
    assert math.isnan(panels["loss"].series["loss (total)"][1][2])  # inf: a gap, not an axis to infinity
    assert math.isnan(panels["accuracy"].series["test"][1][2])
    assert panels["loss"].nonfinite == [3.0, 3.0] and panels["accuracy"].nonfinite == [3.0]
    path = plot_run_curves(write_metrics(tmp_path / "run", records))
    assert path is not None and png_size(path)[0] > 0


def test_a_resumed_run_keeps_the_last_record_of_each_epoch_and_step(tmp_path):
    first = kd_records(epochs=3)
    again = [r for r in kd_records(epochs=4) if r["epoch"] >= 3]  # the resumed attempt logs epoch 3 again
    for r in again:
        for key in ("test/acc", "train/loss_step"):
            if key in r:
                r[key] = r[key] + 100
    run = write_metrics(tmp_path / "run", first + again, extra_lines=('{"epoch": 2, "step": 8, "test/ac',))
    panels = panels_by_title(read_metrics(run / "metrics.jsonl"))
    assert panels["accuracy"].series["test"] == ([1.0, 2.0, 3.0, 4.0], [61.0, 62.0, 163.0, 164.0])
    xs, ys = panels["loss"].series["loss (per step)"]
    assert xs == sorted(set(xs)) and len(xs) == 8  # each step once, in order
    assert ys[4] == 5.0 / 10 + 100  # step 10 (epoch 3) from the resumed attempt


def test_an_unfinished_epoch_is_as_long_as_the_one_before():
    records = kd_records(epochs=2)
    records.append({"epoch": 3, "step": 10, "train/loss_step": 0.3, "train/lr": 0.01})  # killed in epoch 3
    xs, _ = panels_by_title(records)["loss"].series["loss (per step)"]
    assert xs[-1] == 2.5  # 2 of 4 steps into epoch 3


def test_missing_keys_and_empty_files():
    assert curve_panels([]) == []
    only_test = panels_by_title([{"epoch": 1, "step": 3, "test/acc": 50.0}])
    assert list(only_test) == ["accuracy"] and only_test["accuracy"].series == {"test": ([1.0], [50.0])}
    no_epoch = [{"step": 1, "train/loss_step": 1.0}, {"epoch": "x", "test/acc": 1.0}, {"epoch": 1, "test/acc": None}]
    assert curve_panels(no_epoch) == []
    assert curve_panels([{"epoch": 1, "step": 1, "test/acc": 1.0, "train/lr": True}])[0].title == "accuracy"


def test_lr_schedules_over_decades_get_a_log_axis():
    records = [{"epoch": e, "step": e, "test/acc": 1.0, "train/lr": 0.1 * 10**-e} for e in range(1, 5)]
    assert panels_by_title(records)["learning rate"].log_scale
    assert not panels_by_title(kd_records())["learning rate"].log_scale


# ----------------------------------------------------------------------------- the file
@pytest.mark.parametrize("records", [kd_records(epochs=1), at_records(epochs=12)], ids=["one_epoch", "at"])
def test_plot_writes_a_valid_png_next_to_the_metrics(tmp_path, records):
    run = write_metrics(tmp_path / "kd-digits" / "2026-01-01_00-00-00", records)
    path = plot_run_curves(run)
    assert path == run / "curves.png"
    width, height = png_size(path)
    assert 600 <= width <= 2500 and 300 <= height <= 2000, (width, height)
    assert 10_000 < path.stat().st_size < 2_000_000
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temporary file left
    plot_run_curves(run)  # a second call (a resumed run) replaces it
    assert sorted(p.name for p in run.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_nothing_to_plot_writes_nothing(tmp_path):
    assert plot_run_curves(tmp_path) is None  # no metrics.jsonl
    write_metrics(tmp_path, [{"epoch": 0, "step": 0, "teacher/acc": 90.0}])
    assert plot_run_curves(tmp_path) is None
    assert not (tmp_path / "curves.png").exists()


def test_write_curves_warns_instead_of_raising(tmp_path, monkeypatch, caplog):
    run = write_metrics(tmp_path / "run", kd_records())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(curves, "_draw", broken)
    with caplog.at_level(logging.WARNING, logger="ikl.engine.curves"):
        assert write_curves(run) is None
    assert "could not write" in caplog.text and "disk full" in caplog.text
    with pytest.raises(OSError):
        plot_run_curves(run)


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, ikl.engine.curves; assert 'matplotlib' not in sys.modules, 'imported at import time'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
