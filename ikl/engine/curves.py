"""``curves.png`` of one run: its loss terms, accuracies and learning rate against the epoch.

    from ikl.engine.curves import plot_run_curves
    plot_run_curves("outputs/kd-digits-ikl-resnet20-resnet8-s0/2026-01-01_12-00-00")  # -> .../curves.png

It reads the run's ``metrics.jsonl`` (written by :class:`ikl.engine.sink.MetricSink`) and nothing
else. Two kinds of record live there:

* epoch records (one per finished epoch, they carry ``test/acc``): the epoch means of every
  ``train/loss*`` term, ``train/acc``, ``train/lr`` and the evaluation (``test/acc``; adversarial
  training adds the PGD monitor ``test/pgd_acc`` and the weight averages ``test/ema_epoch_acc``,
  ``test/ema_iter_acc``, ``test/ema_*_pgd_acc``);
* step records (every ``trainer.log_every`` steps): ``train/loss_step`` and ``train/lr``.

Both are drawn against the epoch: an epoch record of epoch e at x = e (the end of the epoch it
summarises), a step record at its fraction of the epoch it was taken in (from the steps at which
the epochs ended; an unfinished epoch is assumed as long as the one before it). A resumed run may
log an epoch or a step again: the last record of each wins. Non-finite values (``"nan"``, ``"inf"``
in the file) leave a gap in their line and a dashed red mark where they first occur. Damaged lines
are skipped. matplotlib is imported only when a figure is drawn, through its object API on the Agg
canvas: no pyplot state, no change of the caller's backend.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FILENAME = "curves.png"
EPOCH_KEY = "test/acc"  # present in every epoch record, never in a step record


@dataclass
class Panel:
    """One subplot: a title, a y label and its series (label -> (x, y))."""

    title: str
    ylabel: str
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    nonfinite: list[float] = field(default_factory=list)  # x of the first non-finite value of each series
    log_scale: bool = False


# ------------------------------------------------------------------------------------- reading
def _number(value: Any) -> float | None:
    """A float for numbers and the strings the sink writes for non-finite values; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "+inf", "-inf", "infinity", "-infinity"):
        return float(value.strip().lower().replace("infinity", "inf"))
    return None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in file order; damaged lines (a hard kill mid-write) skipped."""
    records = []
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


def split_records(records: Iterable[Mapping[str, Any]]) -> tuple[dict[int, dict], dict[int, dict]]:
    """({epoch: epoch record}, {step: step record}), the last record of each epoch/step winning."""
    epochs: dict[int, dict] = {}
    steps: dict[int, dict] = {}
    for record in records:
        epoch = _int(record.get("epoch"))
        if epoch is None:
            continue
        if EPOCH_KEY in record:
            epochs[epoch] = dict(record)
        else:
            step = _int(record.get("step"))
            if step is not None:
                steps[step] = dict(record)
    return dict(sorted(epochs.items())), dict(sorted(steps.items()))


def _step_to_epoch(epochs: Mapping[int, dict], steps: Mapping[int, dict]):
    """A function (step, epoch it was taken in) -> fractional epoch, epoch e ending at x = e."""
    ends = {0: 0, **{e: s for e, r in epochs.items() if (s := _int(r.get("step"))) is not None}}
    last_seen: dict[int, int] = {}
    for step, record in steps.items():
        epoch = int(record["epoch"])
        last_seen[epoch] = max(last_seen.get(epoch, step), step)
    bounds: dict[int, tuple[float, float]] = {}  # epoch -> (first step, length in steps)
    known_length = None
    for epoch in range(1, max([*ends, *last_seen]) + 1):
        start = float(ends[epoch - 1]) if epoch - 1 in ends else sum(bounds[epoch - 1])
        if epoch in ends and ends[epoch] > start:
            length = float(ends[epoch] - start)
            known_length = length
        elif known_length is not None:
            length = known_length  # an unfinished epoch: as long as the last finished one
        else:
            length = max(last_seen.get(epoch, start + 1) - start, 1.0)  # nothing to compare: the steps seen
        bounds[epoch] = (start, length)

    def to_x(step: int, epoch: int) -> float:
        if epoch not in bounds:  # epoch 0: before training (e.g. the teacher's accuracy)
            return float(epoch)
        start, length = bounds[epoch]
        return (epoch - 1) + (step - start) / length

    return to_x


def _series(points: Iterable[tuple[float, float]]) -> tuple[list[float], list[float], float | None]:
    """(x, y with non-finite values as NaN, x of the first non-finite value)."""
    xs, ys, first_bad = [], [], None
    for x, y in points:
        if not math.isfinite(y):
            first_bad = x if first_bad is None else first_bad
            y = math.nan
        xs.append(x)
        ys.append(y)
    return xs, ys, first_bad


def _is_loss(key: str) -> bool:
    return key.startswith("train/loss")


def _is_clean_acc(key: str) -> bool:
    return key in ("train/acc", "test/acc") or (
        key.startswith("test/ema_") and key.endswith("_acc") and not key.endswith("pgd_acc")
    )


def _is_robust_acc(key: str) -> bool:
    return key.startswith("test/") and key.endswith("pgd_acc")


LABELS = {
    "train/loss": "loss (total)",
    "train/loss_step": "loss (per step)",
    "train/acc": "train",
    "test/acc": "test",
    "test/pgd_acc": "test, PGD monitor",
    "test/ema_epoch_acc": "test, epoch EMA",
    "test/ema_iter_acc": "test, iteration EMA",
    "test/ema_epoch_pgd_acc": "epoch EMA, PGD",
    "test/ema_iter_pgd_acc": "iteration EMA, PGD",
    "train/lr": "lr",
    "teacher/acc": "teacher (test)",
}


def _label(key: str) -> str:
    return LABELS.get(key, key.split("/", 1)[-1] if _is_loss(key) else key)


def curve_panels(records: Iterable[Mapping[str, Any]]) -> list[Panel]:
    """The panels :func:`plot_run_curves` draws, with their data: ``loss`` (every ``train/loss*``
    term: epoch means, and the per-step loss), ``accuracy`` (train, test, the EMA models), ``robust
    accuracy`` (the PGD monitor, AT runs only) and ``learning rate``. Panels without data are left out."""
    epochs, steps = split_records(records)
    to_x = _step_to_epoch(epochs, steps)
    panels = [
        Panel("loss", "loss"),
        Panel("accuracy", "accuracy (%)"),
        Panel("robust accuracy (PGD)", "accuracy (%)"),
        Panel("learning rate", "lr"),
    ]
    loss, clean, robust, lr = panels

    def add(panel: Panel, key: str, points: list[tuple[float, float]]) -> None:
        if not points:
            return
        xs, ys, bad = _series(points)
        panel.series[_label(key)] = (xs, ys)
        if bad is not None:
            panel.nonfinite.append(bad)

    epoch_keys: list[str] = []
    for record in epochs.values():
        epoch_keys += [k for k in record if k not in epoch_keys]
    for key in epoch_keys:
        target = next(
            (p for test, p in ((_is_loss, loss), (_is_clean_acc, clean), (_is_robust_acc, robust)) if test(key)),
            lr if key == "train/lr" else None,
        )
        if target is None or (key == "train/lr" and any("train/lr" in r for r in steps.values())):
            continue  # the per-step lr is finer; it is drawn below
        points = [(float(e), v) for e, r in epochs.items() if (v := _number(r.get(key))) is not None]
        add(target, key, points)
    for key, panel in (("train/loss_step", loss), ("train/lr", lr)):
        points = [(to_x(s, int(r["epoch"])), v) for s, r in steps.items() if (v := _number(r.get(key))) is not None]
        add(panel, key, points)
    teacher = [v for r in (*epochs.values(), *steps.values()) if (v := _number(r.get("teacher/acc"))) is not None]
    if teacher and clean.series:  # KD: the teacher's test accuracy, a horizontal line across the run
        last = max(x for xs, _ in clean.series.values() for x in xs)
        add(clean, "teacher/acc", [(0.0, teacher[-1]), (max(last, 1.0), teacher[-1])])
    values = [y for y in (lr.series.get("lr") or ([], []))[1] if math.isfinite(y)]
    lr.log_scale = bool(values) and min(values) > 0 and max(values) / min(values) > 50
    return [p for p in panels if p.series]


# ------------------------------------------------------------------------------------- drawing
def _draw(panels: list[Panel], title: str, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = {1: 1, 2: 2, 3: 3}.get(len(panels), 2)
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(5.2 * columns, 3.4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    last_epoch = max([1.0, *(x for p in panels for xs, _ in p.series.values() for x in xs)])
    for ax, panel in zip(axes, panels, strict=False):
        for label, (xs, ys) in panel.series.items():
            if label == LABELS["teacher/acc"]:
                ax.plot(xs, ys, label=label, color="0.4", linestyle="--", linewidth=1.0)
                continue
            step_level = label == LABELS["train/loss_step"] or (panel.title == "learning rate" and len(xs) > 50)
            ax.plot(
                xs,
                ys,
                label=label,
                linewidth=0.8 if step_level else 1.5,
                alpha=0.45 if label == LABELS["train/loss_step"] else 1.0,
                marker="o" if len(xs) <= 12 and not step_level else None,
                markersize=3.5,
            )
        for x in sorted(set(panel.nonfinite)):
            ax.axvline(x, color="red", linestyle="--", linewidth=1.0)
        if panel.nonfinite:
            ax.plot([], [], color="red", linestyle="--", label="non-finite")
        if panel.log_scale:
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlim(0, last_epoch + 0.02 * last_epoch)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if len(panel.series) > 1 or panel.nonfinite:
            ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    # fixed margins: a layout engine would draw the figure twice (half the cost of a plot)
    top = 1 - 0.62 / (3.4 * rows)
    fig.subplots_adjust(
        left=0.75 / (5.2 * columns),
        right=1 - 0.15 / (5.2 * columns),
        bottom=0.5 / (3.4 * rows),
        top=top,
        wspace=0.22,
        hspace=0.42,
    )
    # atomically: a reader (or a run resumed meanwhile) never sees half a PNG
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_run_curves(run_dir: str | os.PathLike) -> Path | None:
    """Write ``<run_dir>/curves.png`` from ``<run_dir>/metrics.jsonl`` and return its path; None (and
    nothing written) when the run logged nothing to plot yet."""
    run_dir = Path(run_dir)
    panels = curve_panels(read_metrics(run_dir / "metrics.jsonl"))
    if not panels:
        return None
    path = run_dir / FILENAME
    _draw(panels, f"{run_dir.parent.name}/{run_dir.name}", path)
    return path


def write_curves(run_dir: str | os.PathLike) -> Path | None:
    """:func:`plot_run_curves` for the end of a run: a failure to plot is a warning, never an error
    that would hide the run's own outcome."""
    try:
        return plot_run_curves(run_dir)
    except Exception as exc:  # noqa: BLE001 - a figure is never worth failing a finished run for
        log.warning("could not write %s: %s: %s", Path(run_dir) / FILENAME, type(exc).__name__, exc)
        return None
