"""Paper-vs-ours tables and plots from run directories.

    python scripts/make_tables.py --runs outputs/reproduce/runs            # every table that has runs
    python scripts/make_tables.py --runs outputs/reproduce/runs --tables table2_at_cifar100 table9_tau
    python scripts/make_tables.py --list                                    # the table names

Inputs:

* run directories under ``--runs`` (searched recursively): ``summary.json`` (written by
  train_kd.py / train_at.py) next to ``config.yaml`` (the resolved config; its top-level ``cell``
  names the experiment file, e.g. ``kd_cifar100/ikl_res32x4_res8x4``), ``metrics.jsonl`` (training
  curves) and ``eval_autoattack/*/result.json`` (eval_autoattack.py). Two kinds of directories that
  carry a copied ``cell`` are skipped: runs nested in another run (train_at's ``compare_to_ce``
  baseline) and teachers auto-trained into the cache (``run_name`` ``teacher-...``).
* the paper's numbers, ``results/paper/*.csv`` (``--paper``): one number per line with ``table``,
  ``metric``, ``value`` (and ``std``), the ``cell`` (``;``-separated) it compares with, and its
  ``source`` (paper table and row).

Outputs: one markdown table per name (``--out``, default outputs/reproduce/tables) with one row
per cell: mean ± sample std over seeds, our number beside the paper's and the difference (ours −
paper); and PNG plots (``--plots``, default outputs/reproduce/plots): training curves per table,
accuracy vs τ (Table 9), AutoAttack accuracy vs ε (Table 10). Generated files never go into
``results/``, which holds committed reference tables only. A table none of whose cells has a run
is not written (one line on stderr says so); with no run at all, or none for any named table,
nothing is written and the exit status is 1.

Which number is ours (results/README.md says the same):

* KD: top-1 on the test set after the last epoch (``acc_last``) and the best epoch's
  (``acc_best``, mdistiller's ``best_acc``: selected on the test set, optimistic); Δ for both.
  Long-tailed data (Table 5) adds the many/medium/few-shot accuracies of the last epoch.
* AT: the clean and robust accuracy of the weights eval_autoattack.py evaluated (the run's
  ``ema_epoch.pt``, the official swa.py model, after the last epoch; for the generated-data cells
  ``ema_iter.pt``, DM-AT's per-iteration weight average), from its ``result.json`` at
  ε = 8/255 (Table 10: each ε). Before an evaluation exists the clean column falls back to the
  training-time test accuracy of the same EMA model (epoch EMA, else iteration EMA), marked "(train)".

Runs of one cell whose configs differ in anything but the seed and bookkeeping (a sweep over τ on
top of a cell, say) are split into one row each, labelled with the differing keys. Marks: † the
runs used another data set than the paper's or stopped before their configured epochs (smoke or
partial runs: not comparable); ‡ AutoAttack on a subset or with a custom attack list (not
leaderboard-comparable).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT_DEFAULT = ROOT / "outputs" / "reproduce"  # scripts/common.sh's OUT: runs, tables and plots (git-ignored)
EPS_TABLE10 = (2, 4, 6, 8, 10, 12)

# Config keys that do not change what a run computes (or that name where it ran): ignored when
# deciding whether two runs of one cell are the same experiment.
BOOKKEEPING = (
    "seed",
    "run_name",
    "run_dir",
    "out_dir",
    "resume",
    "logger",
    "teacher.checkpoint",
    "teacher.cache_dir",
    "dataset.builder.root",
    "dataset.builder.download",
    "trainer.workers",
    "trainer.progress",
    "trainer.device",
    "trainer.stop_after",
    "trainer.log_every",
    "trainer.save_every",
    "trainer.loader",
    "trainer.compile",
    "trainer.channels_last",
)


# ----------------------------------------------------------------------------- table specs
@dataclass(frozen=True)
class Metric:
    key: str  # our value (see run_metrics)
    header: str
    paper: str  # metric name in results/paper/*.csv
    compare: bool = True  # False: ours only (no paper / Δ columns), e.g. numbers the paper does not report


TOP1 = Metric("top1", "Top-1", "top1")
# Long-tailed data: per-group accuracy of the last epoch (classes with > 100, 20..100, < 20 train images)
SHOT_GROUPS = tuple(Metric(g, f"{g.capitalize()}-shot", g, compare=False) for g in ("many", "medium", "few"))
TEACHER = Metric("teacher_top1", "Teacher", "teacher_top1")
CLEAN = Metric("clean", "Clean", "clean")
AA = Metric("aa", "AA", "aa")


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    cells: tuple[str, ...]
    metrics: tuple[Metric, ...]
    paper_tables: tuple[str, ...]  # where to look up the paper's number, in order of preference
    dataset: str
    script: str
    labels: dict[str, str] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)  # a cell's data set when it is not ``dataset``

    def dataset_of(self, cell: str) -> str:
        return self.datasets.get(cell, self.dataset)

    @property
    def adversarial(self) -> bool:
        return all(cell.startswith("at_") for cell in self.cells)


KD_PAIRS = (
    ("res56_res20", "ResNet56→ResNet20"),
    ("res110_res32", "ResNet110→ResNet32"),
    ("res32x4_res8x4", "ResNet32×4→ResNet8×4"),
    ("wrn40_2_wrn_16_2", "WRN-40-2→WRN-16-2"),
    ("wrn40_2_wrn_40_1", "WRN-40-2→WRN-40-1"),
    ("vgg13_vgg8", "VGG13→VGG8"),
    ("res32x4_shuv1", "ResNet32×4→ShuffleV1"),
    ("wrn40_2_shuv1", "WRN-40-2→ShuffleV1"),
    ("vgg13_mv2", "VGG13→MobileNetV2"),
    ("res50_mv2", "ResNet50→MobileNetV2"),
    ("res32x4_shuv2", "ResNet32×4→ShuffleV2"),
)
KD_METHODS = (
    ("ikl", "IKL-KD as released (GI off)"),
    ("ikl_gi", "IKL-KD as described (GI on)"),
    ("kd", "KD"),
    ("dkd", "DKD"),
)
LT_CELLS = (
    ("baseline_x101", "ResNeXt-101-32x4d alone (the teacher)"),
    ("baseline_r18", "ResNet-18 alone"),
    ("baseline_r50", "ResNet-50 alone"),
    ("kl_x101_r18", "ResNeXt-101 → ResNet-18, KL-KD"),
    ("ikl_x101_r18", "ResNeXt-101 → ResNet-18, IKL-KD"),
    ("kl_x101_r50", "ResNeXt-101 → ResNet-50, KL-KD"),
    ("ikl_x101_r50", "ResNeXt-101 → ResNet-50, IKL-KD"),
    ("kl_r18_r18", "self-KD ResNet-18, KL-KD"),
    ("ikl_r18_r18", "self-KD ResNet-18, IKL-KD"),
    ("kl_r50_r50", "self-KD ResNet-50, KL-KD"),
    ("ikl_r50_r50", "self-KD ResNet-50, IKL-KD"),
)
TEACHER_NAMES = ("resnet56", "resnet110", "resnet32x4", "wrn_40_2", "vgg13", "ResNet50")


def _kd_cifar_labels() -> dict[str, str]:
    return {f"kd_cifar100/{m}_{p}": f"{pair}, {method}" for p, pair in KD_PAIRS for m, method in KD_METHODS}


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec(
            "table1_at",
            "Table 1 (AT half): KL → DKL → +BA → +BA+GI, CIFAR-100, WRN-34-10",
            ("at_cifar100/trades", "at_ablation/dkl", "at_ablation/dkl_ba", "at_cifar100/ikl_at"),
            (CLEAN, AA),
            ("P-T1",),
            "cifar100",
            "scripts/ablation_ba_gi.sh",
            {
                "at_cifar100/trades": "(a) KL (TRADES)",
                "at_ablation/dkl": "(b) DKL",
                "at_ablation/dkl_ba": "(c) +BA",
                "at_cifar100/ikl_at": "(d) +BA+GI (IKL-AT)",
            },
        ),
        TableSpec(
            "table1_kd",
            "Table 1 (KD half): KL → DKL → +BA → +BA+GI, ImageNet ResNet-34 → ResNet-18",
            (
                "kd_imagenet/kd_res34_res18",
                "kd_ablation/dkl_res34_res18",
                "kd_ablation/dkl_ba_res34_res18",
                "kd_imagenet/ikl_res34_res18",
            ),
            (TEACHER, TOP1),
            ("P-T1", "P-T4"),
            "imagenet",
            "scripts/ablation_ba_gi.sh",
            {
                "kd_imagenet/kd_res34_res18": "(a) KL (KD)",
                "kd_ablation/dkl_res34_res18": "(b) DKL",
                "kd_ablation/dkl_ba_res34_res18": "(c) +BA",
                "kd_imagenet/ikl_res34_res18": "(d) +BA+GI (IKL-KD)",
            },
        ),
        TableSpec(
            "table2_at_cifar100",
            "Table 2: adversarial training on CIFAR-100, WRN-34-10 (clean / AutoAttack)",
            ("at_cifar100/ikl_at", "at_cifar100/ikl_at_autoaug", "at_cifar100/trades", "at_cifar100/trades_autoaug"),
            (CLEAN, AA),
            ("P-T2", "P-T1"),
            "cifar100",
            "scripts/at_cifar100.sh",
            {
                "at_cifar100/ikl_at": "IKL-AT",
                "at_cifar100/ikl_at_autoaug": "IKL-AT, AutoAugment",
                "at_cifar100/trades": "TRADES (paper: P-T1 KL row)",
                "at_cifar100/trades_autoaug": "TRADES, AutoAugment",
            },
        ),
        TableSpec(
            "table3_at_cifar10",
            "Table 3: adversarial training on CIFAR-10, WRN-34-10 (clean / AutoAttack)",
            ("at_cifar10/ikl_at", "at_cifar10/ikl_at_autoaug", "at_cifar10/trades", "at_cifar10/trades_autoaug"),
            (CLEAN, AA),
            ("P-T3", "RD-A"),
            "cifar10",
            "scripts/at_cifar10.sh",
            {
                "at_cifar10/ikl_at": "IKL-AT",
                "at_cifar10/ikl_at_autoaug": "IKL-AT, AutoAugment",
                "at_cifar10/trades": "TRADES (paper: AWP row of the README)",
                "at_cifar10/trades_autoaug": "TRADES, AutoAugment",
            },
        ),
        TableSpec(
            "table4_kd_imagenet",
            "Table 4: ImageNet KD (top-1)",
            (
                "kd_imagenet/ikl_res34_res18",
                "kd_imagenet/kd_res34_res18",
                "kd_imagenet/ikl_res50_mv1",
                "kd_imagenet/kd_res50_mv1",
            ),
            (TEACHER, TOP1),
            ("P-T4",),
            "imagenet",
            "scripts/kd_imagenet.sh",
            {
                "kd_imagenet/ikl_res34_res18": "ResNet34→ResNet18, IKL-KD",
                "kd_imagenet/kd_res34_res18": "ResNet34→ResNet18, KD",
                "kd_imagenet/ikl_res50_mv1": "ResNet50→MobileNetV1, IKL-KD",
                "kd_imagenet/kd_res50_mv1": "ResNet50→MobileNetV1, KD",
            },
        ),
        TableSpec(
            "table5_kd_imagenet_lt",
            "Table 5: KD on ImageNet-LT (top-1 on the test split; many/medium/few-shot of the last epoch)",
            tuple(f"kd_imagenet_lt/{c}" for c, _ in LT_CELLS),
            (TEACHER, TOP1, *SHOT_GROUPS),
            ("P-T5", "RD-LT"),
            "imagenet_lt",
            "scripts/kd_imagenet_lt.sh",
            {f"kd_imagenet_lt/{c}": label for c, label in LT_CELLS},
        ),
        TableSpec(
            "table7_wmse",
            "Table 7: IKL-AT wMSE weight (paper α/4; loss.wmse_weight = α), CIFAR-100",
            ("at_ablation/wmse12", "at_ablation/wmse16", "at_cifar100/ikl_at", "at_ablation/wmse24"),
            (CLEAN, AA),
            ("P-T7",),
            "cifar100",
            "scripts/sweep_weights.sh",
            {
                "at_ablation/wmse12": "α/4 = 3",
                "at_ablation/wmse16": "α/4 = 4",
                "at_cifar100/ikl_at": "α/4 = 5",
                "at_ablation/wmse24": "α/4 = 6",
            },
        ),
        TableSpec(
            "table8_sce",
            "Table 8: IKL-AT sCE weight (paper β = loss.sce_weight), CIFAR-100",
            ("at_ablation/sce2", "at_ablation/sce3", "at_ablation/sce4", "at_cifar100/ikl_at"),
            (CLEAN, AA),
            ("P-T8",),
            "cifar100",
            "scripts/sweep_weights.sh",
            {
                "at_ablation/sce2": "β = 2",
                "at_ablation/sce3": "β = 3",
                "at_ablation/sce4": "β = 4",
                "at_cifar100/ikl_at": "β = 5",
            },
        ),
        TableSpec(
            "table9_tau",
            "Table 9: temperature τ of the class-wise prior (IKL-AT, CIFAR-100)",
            ("at_ablation/tau1", "at_ablation/tau2", "at_ablation/tau3", "at_cifar100/ikl_at"),
            (CLEAN, AA),
            ("P-T9",),
            "cifar100",
            "scripts/sweep_tau.sh",
            {
                "at_ablation/tau1": "τ = 1",
                "at_ablation/tau2": "τ = 2",
                "at_ablation/tau3": "τ = 3",
                "at_cifar100/ikl_at": "τ = 4",
            },
        ),
        TableSpec(
            "table10_aa_eps",
            "Table 10: AutoAttack accuracy vs ε (CIFAR-100, WRN-34-10)",
            ("at_cifar100/trades", "at_cifar100/ikl_at"),
            (CLEAN,)
            + tuple(Metric(f"aa_eps{e}", f"AA ε={e}/255", f"aa_eps{e}") for e in EPS_TABLE10)
            + (Metric("aa_eps_avg", "AA average", "aa_eps_avg"),),
            ("P-T10",),
            "cifar100",
            "scripts/aa_eps.sh",
            {"at_cifar100/trades": "TRADES", "at_cifar100/ikl_at": "IKL-AT"},
        ),
        TableSpec(
            "table2_at_cifar100_generated",
            "Table 2 (generated-data rows) and the README's 1M rows: CIFAR-100 + generated images, WRN-28-10-swish",
            (
                "at_generated/ikl_at_cifar100_50m",
                "at_generated/ikl_at_cifar100_1m",
                "at_generated/trades_cifar100_50m",
                "at_generated/trades_cifar100_1m",
            ),
            (CLEAN, AA),
            ("P-T2", "RD-A"),
            "cifar100_generated",
            "scripts/at_generated.sh",
            {
                "at_generated/ikl_at_cifar100_50m": "IKL-AT, 50M (a5 b12 T4)",
                "at_generated/ikl_at_cifar100_1m": "IKL-AT, 1M (README)",
                "at_generated/trades_cifar100_50m": "TRADES, 50M (Wang et al.)",
                "at_generated/trades_cifar100_1m": "TRADES, 1M (Wang et al.)",
            },
        ),
        TableSpec(
            "table3_at_cifar10_generated",
            "Table 3 (generated-data rows) and the README's 1M rows: CIFAR-10 + generated images, WRN-28-10-swish",
            (
                "at_generated/ikl_at_cifar10_20m",
                "at_generated/ikl_at_cifar10_1m",
                "at_generated/trades_cifar10_20m",
                "at_generated/trades_cifar10_1m",
            ),
            (CLEAN, AA),
            ("P-T3", "RD-A"),
            "cifar10_generated",
            "scripts/at_generated.sh",
            {
                "at_generated/ikl_at_cifar10_20m": "IKL-AT, 20M (a3 b10 T4)",
                "at_generated/ikl_at_cifar10_1m": "IKL-AT, 1M (README)",
                "at_generated/trades_cifar10_20m": "TRADES, 20M (Wang et al.)",
                "at_generated/trades_cifar10_1m": "TRADES, 1M (Wang et al.)",
            },
        ),
        TableSpec(
            "table11_attacks",
            "Table 11: PGD-k / CW-k (step 2/255), AutoAttack and the per-sample worst case (CIFAR-100)",
            (
                "at_cifar100/trades",
                "at_cifar100/ikl_at",
                "at_cifar100/ikl_at_autoaug",
                "at_generated/ikl_at_cifar100_50m",
            ),
            (
                CLEAN,
                Metric("pgd10", "PGD-10", "pgd10"),
                Metric("pgd20", "PGD-20", "pgd20"),
                Metric("cw10", "CW-10", "cw10"),
                Metric("cw20", "CW-20", "cw20"),
                AA,
                Metric("worst", "Worst case", "worst"),
            ),
            ("P-T11",),
            "cifar100",
            "scripts/at_cifar100.sh, scripts/at_generated.sh",
            {
                "at_cifar100/trades": "TRADES",
                "at_cifar100/ikl_at": "IKL-AT",
                "at_cifar100/ikl_at_autoaug": "IKL-AT autoaug",
                "at_generated/ikl_at_cifar100_50m": "IKL-AT synthetic (WRN-28-10, 50M)",
            },
            {"at_generated/ikl_at_cifar100_50m": "cifar100_generated"},
        ),
        TableSpec(
            "table12_robustbench",
            "Table 12: the RobustBench CIFAR-100 L∞ entries (ours; the paper's 'previous best' in results/paper)",
            ("at_cifar100/ikl_at", "at_cifar100/ikl_at_autoaug", "at_generated/ikl_at_cifar100_50m"),
            (CLEAN, AA),
            ("P-T12",),
            "cifar100",
            "scripts/at_cifar100.sh, scripts/at_generated.sh",
            {
                "at_cifar100/ikl_at": "basic (WRN-34-10)",
                "at_cifar100/ikl_at_autoaug": "AutoAug (WRN-34-10)",
                "at_generated/ikl_at_cifar100_50m": "generated data (WRN-28-10-swish, 50M)",
            },
            {"at_generated/ikl_at_cifar100_50m": "cifar100_generated"},
        ),
        TableSpec(
            "table13_14_kd_cifar100",
            "Tables 13/14: CIFAR-100 KD (top-1)",
            tuple(f"kd_cifar100/{m}_{p}" for p, _ in KD_PAIRS for m, _ in KD_METHODS),
            (TEACHER, TOP1),
            ("P-T13", "P-T14"),
            "cifar100",
            "scripts/kd_cifar100.sh",
            _kd_cifar_labels(),
        ),
        TableSpec(
            "table15_kd_strong",
            "Table 15: ImageNet KD with a strong recipe (timm RSB A2 + KD, 300 epochs), BEiT-L → ResNet-50 (top-1)",
            ("kd_strong/kd_beitl_res50", "kd_strong/dkd_beitl_res50", "kd_strong/ikl_beitl_res50"),
            (TEACHER, TOP1),
            ("P-T15",),
            "imagenet",
            "scripts/kd_strong.sh",
            {
                "kd_strong/kd_beitl_res50": "KD",
                "kd_strong/dkd_beitl_res50": "DKD",
                "kd_strong/ikl_beitl_res50": "IKL-KD (GI on)",
            },
        ),
        TableSpec(
            "teachers_cifar100",
            "CIFAR-100 teachers trained from scratch vs the published ones (P-T13/14 teacher column)",
            tuple(f"kd_teachers/{t}" for t in TEACHER_NAMES),
            (Metric("top1", "Top-1", "teacher_top1"),),
            ("P-T13", "P-T14"),
            "cifar100",
            "scripts/train_teachers.sh",
            {f"kd_teachers/{t}": t for t in TEACHER_NAMES},
        ),
    )
}


# ----------------------------------------------------------------------------- paper numbers
@dataclass(frozen=True)
class PaperValue:
    value: float
    std: float | None
    source: str


def load_paper(directory: Path) -> dict[tuple[str, str, str], PaperValue]:
    """{(paper table, cell, metric): value} from every ``*.csv`` (first occurrence wins)."""
    found: dict[tuple[str, str, str], PaperValue] = {}
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                std = float(row["std"]) if row.get("std") else None
                value = PaperValue(float(row["value"]), std, row["source"])
                for cell in filter(None, (row.get("cell") or "").split(";")):
                    found.setdefault((row["table"], cell, row["metric"]), value)
    return found


def paper_value(paper: dict, spec: TableSpec, cell: str, metric: Metric) -> PaperValue | None:
    for table in spec.paper_tables:
        if (table, cell, metric.paper) in paper:
            return paper[(table, cell, metric.paper)]
    return None


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    path: Path
    cell: str
    seed: Any
    config: dict[str, Any]
    summary: dict[str, Any]
    evaluations: list[dict[str, Any]]
    mtime: float


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(node, sort_keys=True)}


def _is_bookkeeping(key: str) -> bool:
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"make_tables: skipping unreadable {path} ({exc})", file=sys.stderr)
        return None


def find_runs(roots: Iterable[Path]) -> list[Run]:
    """Every run (one per cell, variant and seed: the newest) under ``roots``."""
    runs: list[Run] = []
    for root in roots:
        for summary_path in sorted(root.rglob("summary.json")):
            run_dir = summary_path.parent
            config_path = run_dir / "config.yaml"
            if not config_path.is_file():
                continue
            nested = any(
                (parent / "summary.json").is_file()
                for parent in run_dir.parents
                if parent == root or root in parent.parents
            )
            config = yaml.safe_load(config_path.read_text()) or {}
            cell = config.get("cell")
            if not cell or nested or str(config.get("run_name", "")).startswith("teacher-"):
                continue
            summary = _read_json(summary_path)
            if summary is None:
                continue
            evaluations = [e for e in map(_read_json, sorted(run_dir.glob("eval_autoattack/*/result.json"))) if e]
            runs.append(
                Run(run_dir, cell, config.get("seed"), config, summary, evaluations, summary_path.stat().st_mtime)
            )
    return runs


def group_runs(runs: Sequence[Run]) -> dict[str, list[tuple[str, list[Run]]]]:
    """{cell: [(variant label, runs)]}; a variant is a set of runs that differ only in seed and bookkeeping."""
    by_cell: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_cell[run.cell].append(run)
    grouped: dict[str, list[tuple[str, list[Run]]]] = {}
    for cell, cell_runs in by_cell.items():
        flat = [{k: v for k, v in _flatten(r.config).items() if not _is_bookkeeping(k)} for r in cell_runs]
        keys = sorted({k for f in flat for k in f})
        varying = [k for k in keys if len({f.get(k) for f in flat}) > 1]
        variants: dict[str, dict[Any, Run]] = defaultdict(dict)
        for run, f in zip(cell_runs, flat, strict=True):
            label = ", ".join(f"{k}={json.loads(f[k]) if k in f else None}" for k in varying)
            newest = variants[label].get(run.seed)
            if newest is None or run.mtime > newest.mtime:
                variants[label][run.seed] = run
        grouped[cell] = [
            (label, sorted(v.values(), key=lambda r: str(r.seed))) for label, v in sorted(variants.items())
        ]
    return grouped


def _eps255(result: dict[str, Any]) -> float | None:
    eps = result.get("eps")
    try:
        value = float(Fraction(str(eps))) if eps is not None else float(result["eps_float"])
    except (ValueError, KeyError, ZeroDivisionError):
        return None
    return round(value * 255, 6)


def _pick(results: list[dict[str, Any]], eps255: float) -> dict[str, Any] | None:
    """The result at ε = eps255/255: standard AutoAttack on the most examples first."""
    at_eps = [r for r in results if _eps255(r) == eps255 and r.get("robust_acc") is not None]
    if not at_eps:
        at_eps = [r for r in results if _eps255(r) == eps255]
    if not at_eps:
        return None
    return max(
        at_eps,
        key=lambda r: (bool(r.get("comparable_to_leaderboard")), r.get("version") == "standard", r.get("n_ex", 0)),
    )


def _pct(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


def run_metrics(run: Run) -> dict[str, Any]:
    """Our numbers of one run, in percent (see the module docstring for which is which)."""
    s = run.summary
    out: dict[str, Any] = {
        "top1_last": s.get("acc_last"),
        "top1_best": s.get("acc_best"),
        "teacher_top1": s.get("teacher_acc"),
        "train_clean": s.get(
            "test_ema_epoch_acc_last",
            s.get("test_ema_iter_acc_last", s.get("acc_last") if "test_pgd_acc_last" in s else None),
        ),
        "subset_aa": False,
        **{g.key: s.get(f"test_acc_{g.key}_last") for g in SHOT_GROUPS},
    }
    main = _pick(run.evaluations, 8.0)
    if main is not None:
        out["clean"] = _pct(main.get("clean_acc"))
        out["aa"] = _pct(main.get("robust_acc"))
        out["worst"] = _pct(main.get("worst_case_robust_acc"))
        for name, value in (main.get("evaluations") or {}).items():
            if name != "autoattack" and isinstance(value, dict):
                out[name] = _pct(value.get("robust_acc"))
        out["subset_aa"] = not main.get("comparable_to_leaderboard", False)
    for eps in EPS_TABLE10:
        result = _pick(run.evaluations, float(eps))
        if result is not None and result.get("robust_acc") is not None:
            out[f"aa_eps{eps}"] = _pct(result["robust_acc"])
            out["subset_aa"] = out["subset_aa"] or not result.get("comparable_to_leaderboard", False)
    eps_values = [out.get(f"aa_eps{e}") for e in EPS_TABLE10]
    if all(v is not None for v in eps_values):
        out["aa_eps_avg"] = sum(eps_values) / len(eps_values)
    return out


def is_partial(run: Run, dataset: str) -> bool:
    """True for runs not comparable with the paper: another data set, or stopped early."""
    epochs = (run.config.get("trainer") or {}).get("epochs")
    return run.summary.get("dataset") != dataset or (epochs is not None and run.summary.get("epochs", 0) < epochs)


# ----------------------------------------------------------------------------- formatting
def mean_std(values: Sequence[float]) -> tuple[float, float | None] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_stat(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def fmt_paper(value: PaperValue | None) -> str:
    if value is None:
        return "—"
    return f"{value.value:.2f}" if value.std is None else f"{value.value:.2f} ± {value.std:.2f}"


def fmt_delta(stat: tuple[float, float | None] | None, value: PaperValue | None) -> str:
    if stat is None or value is None:
        return "—"
    delta = stat[0] - value.value
    return f"{delta:+.2f}".replace("-", "−")


def _row_cells(spec: TableSpec, cell: str, runs: list[Run], paper: dict) -> tuple[list[str], list[str]]:
    """The markdown cells of one row, and the paper sources it used."""
    metrics = [run_metrics(r) for r in runs]
    cells: list[str] = []
    sources: list[str] = []
    for metric in spec.metrics:
        pv = paper_value(paper, spec, cell, metric)
        if pv is not None:
            sources.append(pv.source)
        if metric.key == "top1":
            last = mean_std([m["top1_last"] for m in metrics])
            best = mean_std([m["top1_best"] for m in metrics])
            cells += [fmt_stat(last), fmt_stat(best), fmt_paper(pv), fmt_delta(last, pv), fmt_delta(best, pv)]
            continue
        stat = mean_std([m.get(metric.key) for m in metrics])
        if not metric.compare:
            cells.append(fmt_stat(stat))
            continue
        shown = fmt_stat(stat)
        if metric.key == "clean" and stat is None:
            stat = mean_std([m.get("train_clean") for m in metrics])
            shown = fmt_stat(stat) + " (train)" if stat is not None else "—"
        cells += [shown, fmt_paper(pv), fmt_delta(stat, pv)]
    return cells, sources


def render_table(spec: TableSpec, grouped: dict[str, list[tuple[str, list[Run]]]], paper: dict) -> str:
    header = ["Cell", "Setting", "Seeds"]
    for metric in spec.metrics:
        if metric.key == "top1":
            header += [f"{metric.header} last", f"{metric.header} best", "Paper", "Δ last", "Δ best"]
        elif not metric.compare:
            header.append(metric.header)
        else:
            header += [metric.header, "Paper", "Δ"]
    header.append("Paper source")
    lines = [
        f"# {spec.title}",
        "",
        f"Script: `{spec.script}`. Ours: mean ± sample std over seeds; Δ = ours − paper. "
        "Protocol and known deviations: results/README.md.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    marks: set[str] = set()
    for cell in spec.cells:
        variants = grouped.get(cell) or [("", [])]
        for label, runs in variants:
            values, sources = _row_cells(spec, cell, runs, paper)
            flags = ""
            if any(is_partial(r, spec.dataset_of(cell)) for r in runs):
                flags += "†"
            if any(run_metrics(r)["subset_aa"] for r in runs):
                flags += "‡"
            marks.update(flags)
            setting = spec.labels.get(cell, "") + (f" [{label}]" if label else "")
            seeds = f"{len(runs)}{flags}"
            source = "; ".join(dict.fromkeys(src.split(", ")[0] for src in sources)) or "—"
            lines.append("| " + " | ".join([f"`{cell}`", setting, seeds, *values, source]) + " |")
    lines.append("")
    if "†" in marks:
        expected = ", ".join(dict.fromkeys(spec.dataset_of(c) for c in spec.cells))
        lines.append(
            f"† some runs used another data set than {expected} or stopped before their configured "
            "epochs (smoke or unfinished runs): not comparable with the paper."
        )
    if "‡" in marks:
        lines.append(
            "‡ AutoAttack on a subset of the test set or with a custom attack list: not leaderboard-comparable."
        )
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------- plots
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported only when plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_curve(run: Run, key: str) -> dict[int, float]:
    path = run.path / "metrics.jsonl"
    curve: dict[int, float] = {}
    if not path.is_file():
        return curve
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in record and "epoch" in record:
            curve[int(record["epoch"])] = float(record[key])
    return curve


def plot_curves(spec: TableSpec, grouped: dict, out: Path) -> Path | None:
    """Test accuracy (and, for AT, the PGD monitor) per epoch, mean over seeds, one line per row."""
    rows = [(cell, label, runs) for cell in spec.cells for label, runs in grouped.get(cell, []) if runs]
    if not rows:
        return None
    keys = [("test/acc", "test accuracy (%)")]
    if spec.adversarial:
        keys.append(("test/pgd_acc", "PGD monitor accuracy (%)"))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], keys, strict=True):
        for cell, label, runs in rows:
            curves = [read_curve(r, key) for r in runs]
            epochs = sorted(set().union(*curves))
            if not epochs:
                continue
            mean = [statistics.fmean(c[e] for c in curves if e in c) for e in epochs]
            name = spec.labels.get(cell, cell) + (f" [{label}]" if label else "")
            ax.plot(epochs, mean, marker="o" if len(epochs) < 3 else None, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(spec.title, fontsize=9)
    fig.tight_layout()
    path = out / f"curves_{spec.name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series(
    spec: TableSpec, grouped: dict, paper: dict, metric: Metric, fallback: str | None = None
) -> tuple[list[tuple[float, float | None] | None], list[PaperValue | None]]:
    """Per cell of ``spec``: our mean ± std of ``metric`` (or ``fallback``) and the paper's value."""
    ours, paper_points = [], []
    for cell in spec.cells:
        runs = [r for _, rs in grouped.get(cell, []) for r in rs]
        values = [run_metrics(r).get(metric.key) for r in runs]
        if fallback and all(v is None for v in values):
            values = [run_metrics(r).get(fallback) for r in runs]
        ours.append(mean_std(values))
        paper_points.append(paper_value(paper, spec, cell, metric))
    return ours, paper_points


def _plot_ours_vs_paper(
    ax: Any, xs: Sequence[float], ours: Sequence[Any], paper_points: Sequence[PaperValue | None], label: str, color: str
) -> None:
    pts = [(x, s) for x, s in zip(xs, ours, strict=True) if s is not None]
    if pts:
        ax.errorbar(
            [x for x, _ in pts],
            [s[0] for _, s in pts],
            yerr=[s[1] or 0 for _, s in pts],
            marker="o",
            color=color,
            label=f"{label} (ours)",
            capsize=3,
        )
    ppts = [(x, p) for x, p in zip(xs, paper_points, strict=True) if p is not None]
    if ppts:
        ax.plot(
            [x for x, _ in ppts], [p.value for _, p in ppts], "--s", color=color, alpha=0.6, label=f"{label} (paper)"
        )


def plot_tau(grouped: dict, paper: dict, out: Path) -> Path:
    spec = TABLES["table9_tau"]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    taus = [1, 2, 3, 4]
    for ax, metric, fallback in ((axes[0], CLEAN, "train_clean"), (axes[1], AA, None)):
        ours, paper_points = _series(spec, grouped, paper, metric, fallback)
        _plot_ours_vs_paper(ax, taus, ours, paper_points, metric.header, "C0" if metric is CLEAN else "C3")
        ax.set_xlabel("τ (loss.prior_temperature)")
        ax.set_ylabel(f"{metric.header} accuracy (%)")
        ax.set_xticks(taus)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(spec.title, fontsize=9)
    fig.tight_layout()
    path = out / "tau.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_aa_eps(grouped: dict, paper: dict, out: Path) -> Path:
    spec = TABLES["table10_aa_eps"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, cell in zip(("C1", "C0"), spec.cells, strict=True):
        one = TableSpec(spec.name, spec.title, (cell,), spec.metrics, spec.paper_tables, spec.dataset, spec.script)
        ours, paper_points = [], []
        for eps in EPS_TABLE10:
            metric = Metric(f"aa_eps{eps}", "", f"aa_eps{eps}")
            o, p = _series(one, grouped, paper, metric)
            ours.append(o[0])
            paper_points.append(p[0])
        _plot_ours_vs_paper(ax, list(EPS_TABLE10), ours, paper_points, spec.labels[cell], color)
    ax.set_xlabel("ε (×1/255)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_xticks(list(EPS_TABLE10))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(spec.title, fontsize=9)
    fig.tight_layout()
    path = out / "aa_eps.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def build(
    runs_dirs: Sequence[Path],
    names: Sequence[str],
    out: Path,
    plots: Path | None,
    paper_dir: Path,
) -> list[Path]:
    """Write the named tables (and plots); returns the files written."""
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise SystemExit(f"make_tables: unknown table(s) {unknown}; choose from {', '.join(TABLES)}")
    paper = load_paper(paper_dir)
    runs = find_runs(runs_dirs)
    where = ", ".join(f"{d}{'' if d.exists() else ' (does not exist)'}" for d in runs_dirs)
    if not runs:
        raise SystemExit(
            f"make_tables: no runs under {where}, so no table is written; runs are made by "
            "scripts/<table>.sh (e.g. bash scripts/at_cifar100.sh, or SMOKE=1 for a quick check) or by "
            "train_kd.py/train_at.py experiment=<cell>; point --runs at their runs folder"
        )
    for missing in (d for d in runs_dirs if not d.exists()):
        print(f"make_tables: {missing} does not exist; no runs read from it", file=sys.stderr)
    grouped = group_runs(runs)
    empty = [n for n in names if not any(grouped.get(c) for c in TABLES[n].cells)]
    if len(empty) == len(names):
        scripts = ", ".join(dict.fromkeys(TABLES[n].script for n in names))
        raise SystemExit(
            f"make_tables: the runs under {where} are of none of the cells of {', '.join(names)}, so no table "
            f"is written; {scripts} make them"
        )
    for name in empty:
        print(
            f"make_tables: {name}: no run of its cells under {where}; not written ({TABLES[name].script} makes them)",
            file=sys.stderr,
        )
    names = [n for n in names if n not in empty]
    known = {c for t in TABLES.values() for c in t.cells}
    extra = sorted(set(grouped) - known)
    if extra:
        print(f"make_tables: runs of cells in no table (not shown): {', '.join(extra)}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = out / f"{name}.md"
        path.write_text(render_table(TABLES[name], grouped, paper))
        written.append(path)
    if plots is not None:
        plots.mkdir(parents=True, exist_ok=True)
        for name in names:
            curve = plot_curves(TABLES[name], grouped, plots)
            if curve is not None:
                written.append(curve)
        if "table9_tau" in names:
            written.append(plot_tau(grouped, paper, plots))
        if "table10_aa_eps" in names:
            written.append(plot_aa_eps(grouped, paper, plots))
    return written


def build_parser() -> argparse.ArgumentParser:
    """The command line; its defaults are those of scripts/common.sh (OUT=outputs/reproduce)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[OUT_DEFAULT / "runs"])
    parser.add_argument("--tables", nargs="+", default=list(TABLES), help="table names (default: all)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT / "tables")
    parser.add_argument("--plots", type=Path, default=OUT_DEFAULT / "plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--paper", type=Path, default=ROOT / "results" / "paper")
    parser.add_argument("--list", action="store_true", help="print the table names and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for spec in TABLES.values():
            print(f"{spec.name:24s} {spec.title} ({spec.script})")
        return 0
    written = build(args.runs, args.tables, args.out, None if args.no_plots else args.plots, args.paper)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
