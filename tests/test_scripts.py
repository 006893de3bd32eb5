"""Every scripts/<table>.sh in smoke mode end to end, then make_tables.py over all their outputs.

The scripts run as a user would (``SMOKE=1 OUT=<tmp> bash scripts/x.sh``, W&B offline), two at a
time (CI has two cores; a smoke run is mostly interpreter start-up and single-threaded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.runutils import ROOT, TINY_DIGITS

pytestmark = pytest.mark.slow

TINY_DIGITS_OFFLINE = [o for o in TINY_DIGITS if not o.startswith("logger.")] + ["logger.mode=offline"]

# Longest first, so that two workers finish together.
SCRIPTS = [
    "ablation_ba_gi",
    "aa_eps",
    "sweep_weights",
    "at_cifar100",
    "at_generated",
    "at_cifar10",
    "sweep_tau",
    "kd_cifar100",
    "train_teachers",
    "kd_imagenet",
    "kd_imagenet_lt",
    "kd_strong",
    "get_teachers",
]
# What each script's smoke run must leave behind: run dirs of these cells (seed 0) and these tables.
EXPECTED = {
    "ablation_ba_gi": (
        ["at_cifar100/trades", "at_ablation/dkl", "at_ablation/dkl_ba", "at_cifar100/ikl_at"]
        + ["kd_imagenet/kd_res34_res18", "kd_ablation/dkl_res34_res18", "kd_ablation/dkl_ba_res34_res18"],
        ["table1_at", "table1_kd"],
    ),
    "aa_eps": (["at_cifar100/trades", "at_cifar100/ikl_at"], ["table10_aa_eps"]),
    "sweep_weights": (
        ["at_ablation/wmse12", "at_ablation/wmse16", "at_ablation/wmse24", "at_ablation/sce2", "at_ablation/sce4"],
        ["table7_wmse", "table8_sce"],
    ),
    "at_cifar100": (
        ["at_cifar100/ikl_at", "at_cifar100/ikl_at_autoaug", "at_cifar100/trades_autoaug"],
        ["table2_at_cifar100", "table11_attacks"],
    ),
    "at_cifar10": (["at_cifar10/ikl_at", "at_cifar10/trades", "at_cifar10/trades_autoaug"], ["table3_at_cifar10"]),
    "at_generated": (
        [
            f"at_generated/{m}_{d}"
            for m in ("ikl_at", "trades")
            for d in ("cifar100_50m", "cifar100_1m", "cifar10_20m", "cifar10_1m")
        ],
        ["table2_at_cifar100_generated", "table3_at_cifar10_generated", "table11_attacks", "table12_robustbench"],
    ),
    "sweep_tau": (["at_ablation/tau1", "at_ablation/tau3", "at_cifar100/ikl_at"], ["table9_tau"]),
    "kd_cifar100": (
        [f"kd_cifar100/{m}_res32x4_res8x4" for m in ("ikl", "ikl_gi", "kd", "dkd")],
        ["table13_14_kd_cifar100"],
    ),
    "train_teachers": (["kd_teachers/resnet56", "kd_teachers/ResNet50"], ["teachers_cifar100"]),
    "kd_imagenet": (["kd_imagenet/ikl_res34_res18", "kd_imagenet/kd_res50_mv1"], ["table4_kd_imagenet"]),
    "kd_imagenet_lt": (
        ["kd_imagenet_lt/baseline_x101", "kd_imagenet_lt/ikl_x101_r50", "kd_imagenet_lt/kl_r18_r18"],
        ["table5_kd_imagenet_lt"],
    ),
    "kd_strong": (
        ["kd_strong/kd_beitl_res50", "kd_strong/dkd_beitl_res50", "kd_strong/ikl_beitl_res50"],
        ["table15_kd_strong"],
    ),
    "get_teachers": ([], []),
}
# The script that evaluates with AutoAttack in smoke mode: its first cell's seed-0 run.
EVALUATED = {
    "ablation_ba_gi": "at_cifar100/trades",
    "aa_eps": "at_cifar100/trades",
    "sweep_weights": "at_ablation/wmse12",
    "at_cifar100": "at_cifar100/ikl_at",
    "at_cifar10": "at_cifar10/ikl_at",
    "at_generated": "at_generated/ikl_at_cifar100_50m",
    "sweep_tau": "at_ablation/tau1",
}


def script_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", **extra}
    env.pop("IKL_CACHE", None)  # each script caches its digits teacher under its own OUT
    return env


def run_script(name: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / f"{name}.sh")],
        cwd=ROOT,
        env=script_env(OUT=str(out), **env),
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("smoke")

    def one(name: str):
        started = time.monotonic()
        proc = run_script(name, base / name, SMOKE="1")
        return name, (proc, time.monotonic() - started)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(pool.map(one, SCRIPTS))
    timing = ", ".join(f"{n} {t:.0f}s" for n, (_, t) in results.items())
    sys.stderr.write(f"\nsmoke scripts: {time.monotonic() - started:.0f}s in all ({timing})\n")
    return base, results


def run_dir(out: Path, cell: str, seed: int = 0) -> Path:
    return out / "runs" / f"{cell.replace('/', '-')}-s{seed}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_smoke_mode_runs(smoke, name):
    base, results = smoke
    proc, _ = results[name]
    assert proc.returncode == 0, f"{name}.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = base / name
    assert "+ python" in proc.stdout, "scripts print what they run"
    cells, tables = EXPECTED[name]
    for cell in cells:
        summary = run_dir(out, cell) / "summary.json"
        assert summary.is_file(), f"{cell}: no run in {out / 'runs'}"
    for table in tables:
        text = (out / "tables" / f"{table}.md").read_text()
        assert "| `" in text
    if name in EVALUATED:
        results_json = list((run_dir(out, EVALUATED[name]) / "eval_autoattack").glob("*/result.json"))
        assert results_json, f"{name}: no AutoAttack result"
        if name == "aa_eps":
            assert len(results_json) == 6, "one evaluation per eps"
    if name == "kd_cifar100":
        assert "44 cells compose" in proc.stdout
    if name == "at_generated":  # every cell read both smoke parts through the mixing sampler
        assert proc.stdout.count("generated data: 192 images from 2 file(s), 70% of every batch") == 8
    if name == "train_teachers":
        link = out / "teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
        assert link.resolve() == (run_dir(out, "kd_teachers/resnet32x4") / "checkpoints" / "final.pt").resolve()
    if name == "kd_imagenet_lt":  # a generated tree in the real split-file format; groups in every summary
        assert (out / "imagenet_lt" / "ImageNet_LT_train.txt").is_file()
        for cell in cells:
            summary = json.loads((run_dir(out, cell) / "summary.json").read_text())
            assert {"test_acc_many_last", "test_acc_medium_last", "test_acc_few_last"} <= summary.keys(), cell
        config = yaml.safe_load((run_dir(out, "kd_imagenet_lt/ikl_x101_r50") / "config.yaml").read_text())
        assert config["teacher"]["checkpoint"] == str(
            run_dir(out, "kd_imagenet_lt/baseline_x101") / "checkpoints" / "final.pt"
        )
    if name == "kd_strong":  # the timm teacher came from the saved state-dict file, through the input adapter
        config = yaml.safe_load((run_dir(out, "kd_strong/ikl_beitl_res50") / "config.yaml").read_text())
        assert config["teacher"]["kwargs"]["pretrained"] == str(out / "test_vit_weights.pth")
        assert "inputs mapped to mean (0.5, 0.5, 0.5)" in proc.stdout + proc.stderr
        assert config["trainer"]["aug_repeats"] == 3 and config["mixup"]["_target_"] == "timm.data.Mixup"
    if name == "get_teachers":
        assert "2 teachers verified" in proc.stdout and "loads strictly" in proc.stdout
        assert (out / "cifar_teachers" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth").is_file()


def test_make_tables_on_all_smoke_outputs(smoke, tmp_path):
    base, _ = smoke
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts" / "make_tables.py")
    make_tables = sys.modules.setdefault("make_tables", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(make_tables)
    runs = [base / name / "runs" for name in SCRIPTS if (base / name / "runs").is_dir()]
    written = make_tables.build(
        runs, list(make_tables.TABLES), tmp_path / "tables", tmp_path / "plots", ROOT / "results" / "paper"
    )
    for name, table in make_tables.TABLES.items():
        text = (tmp_path / "tables" / f"{name}.md").read_text()
        rows = [line for line in text.splitlines() if line.startswith("| `")]
        assert len(rows) == len(table.cells), name
        assert "†" in text, f"{name}: smoke runs must be marked as not comparable"
    for plot in ("tau.png", "aa_eps.png", "curves_table2_at_cifar100.png", "curves_table13_14_kd_cifar100.png"):
        assert (tmp_path / "plots" / plot) in written


def test_get_teachers_refuses_a_wrong_checksum(smoke):
    base, _ = smoke
    tar = base / "get_teachers" / "downloads" / "cifar_teachers.tar"
    proc = run_script("get_teachers", base / "checksum", SMOKE="1", TAR=str(tar), CIFAR_TEACHERS_SHA256="0" * 64)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "checksum mismatch" in proc.stderr


def test_get_teachers_without_network_says_so_in_one_line(tmp_path):
    proc = run_script(
        "get_teachers",
        tmp_path / "out",
        CIFAR_TEACHERS_URL="http://127.0.0.1:9/cifar_teachers.tar",
        IKL_TEACHERS=str(tmp_path / "t"),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "cannot download" in proc.stderr and "no network" in proc.stderr
    assert not (tmp_path / "t").exists() or not any((tmp_path / "t").iterdir())


def wandb_run_record(path: Path):
    """The ``run`` record (id, group, name) of an offline W&B run file."""
    from wandb.proto import wandb_internal_pb2

    from tests.wandb_reader import _payloads

    for payload in _payloads(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.HasField("run"):
            return record.run
    raise AssertionError(f"no run record in {path}")


def test_hydra_multirun_over_loss_and_tau_gives_each_job_its_run_dir_and_wandb_run(tmp_path):
    overrides = [
        "-m",
        "loss=ikl,ikl_gi",
        "loss.prior_temperature=2,4",
        *TINY_DIGITS_OFFLINE,
        "trainer.epochs=1",
        "teacher.auto_train_epochs=1",
        f"out_dir={tmp_path}",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_kd.py"), *overrides],
        cwd=ROOT,
        env=script_env(IKL_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name != "jobs")  # jobs/: each job's outcome
    assert len(jobs) == 4 and all((job / "summary.json").is_file() for job in jobs)
    table = (sweep / "sweep_summary.md").read_text()  # the sweep's own table, also printed at its end
    header, _, *rows = [line for line in table.splitlines() if line.startswith("|")]
    assert "loss" in header and "loss.prior_temperature" in header and "acc_last" in header, header
    assert len(rows) == 4 and all("completed" in row for row in rows), table
    assert f"sweep {sweep}" in proc.stdout and (sweep / "sweep_summary.csv").is_file()
    settings, ids = set(), set()
    for job in jobs:
        config = yaml.safe_load((job / "config.yaml").read_text())
        settings.add((config["loss"]["name"], config["loss"]["prior_temperature"]))
        (events,) = job.glob("wandb/offline-run-*/run-*.wandb")
        run = wandb_run_record(events)
        assert run.run_group == sweep.name, "jobs of one sweep share a W&B group"
        ids.add(run.run_id)
    assert settings == {("ikl", 2.0), ("ikl", 4.0), ("ikl_gi", 2.0), ("ikl_gi", 4.0)}
    assert len(ids) == 4, "one W&B run per job"
