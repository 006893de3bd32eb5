"""scripts/make_tables.py on fake run directories: one row per cell, ours beside the paper's."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.runutils import CONFIGS, ROOT

spec = importlib.util.spec_from_file_location("make_tables", ROOT / "scripts" / "make_tables.py")
make_tables = sys.modules.setdefault("make_tables", importlib.util.module_from_spec(spec))
spec.loader.exec_module(make_tables)

PAPER_DIR = ROOT / "results" / "paper"
EXPERIMENT_CELLS = {
    p.relative_to(CONFIGS / "experiment").with_suffix("").as_posix() for p in (CONFIGS / "experiment").rglob("*.yaml")
}


def fake_run(
    root: Path,
    cell: str,
    seed: int,
    *,
    dataset: str = "cifar100",
    epochs: int = 240,
    summary: dict | None = None,
    config: dict | None = None,
    evals: list[dict] | None = None,
    curve: list[float] | None = None,
    name: str | None = None,
) -> Path:
    run_dir = root / (name or f"{cell.replace('/', '-')}-s{seed}")
    run_dir.mkdir(parents=True)
    cfg = {"cell": cell, "seed": seed, "run_name": run_dir.name, "trainer": {"epochs": epochs}, "loss": {"name": "x"}}
    cfg.update(config or {})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    body = {"dataset": dataset, "seed": seed, "epochs": epochs, **(summary or {})}
    (run_dir / "summary.json").write_text(json.dumps(body))
    for i, result in enumerate(evals or []):
        target = run_dir / "eval_autoattack" / f"e{i}"
        target.mkdir(parents=True)
        (target / "result.json").write_text(json.dumps(result))
    records = [{"epoch": e + 1, "test/acc": v, "test/pgd_acc": v / 2} for e, v in enumerate(curve or [])]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def aa_result(eps: str, clean: float, robust: float, *, n_ex: int = 10000, extra: dict | None = None) -> dict:
    evaluations = {"autoattack": {"robust_acc": robust}, **(extra or {})}
    return {
        "eps": eps,
        "version": "standard",
        "n_ex": n_ex,
        "comparable_to_leaderboard": n_ex >= 10000,
        "clean_acc": clean,
        "robust_acc": robust,
        "worst_case_robust_acc": min([robust] + [v["robust_acc"] for v in (extra or {}).values()]),
        "evaluations": evaluations,
    }


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            key = match.group(1)
            cells = [c.strip() for c in match.group(2).split("|")]
            rows[key if key not in rows else f"{key}#{len(rows)}"] = cells
    return rows


def header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| Cell"))
    return [c.strip() for c in line.strip("|").split("|")]


def column(text: str, cell: str, name: str, occurrence: int = 0) -> str:
    head = header(text)
    index = [i for i, h in enumerate(head) if h == name][occurrence]
    return table_rows(text)[cell][index - 1]


# ----------------------------------------------------------------------------- KD
def test_kd_table_has_one_row_per_cell_with_the_paper_beside_ours(tmp_path):
    runs = tmp_path / "runs"
    for seed, (last, best) in enumerate([(76.0, 76.4), (76.2, 76.6), (76.4, 76.8)]):
        fake_run(
            runs,
            "kd_cifar100/ikl_res32x4_res8x4",
            seed,
            summary={"acc_last": last, "acc_best": best, "teacher_acc": 79.42},
            curve=[10.0, 50.0, last],
        )
    written = make_tables.build([runs], ["table13_14_kd_cifar100"], tmp_path / "t", tmp_path / "p", PAPER_DIR)
    text = (tmp_path / "t" / "table13_14_kd_cifar100.md").read_text()
    rows = table_rows(text)
    assert list(rows) == list(make_tables.TABLES["table13_14_kd_cifar100"].cells)
    assert len(rows) == 44
    cell = "kd_cifar100/ikl_res32x4_res8x4"
    assert column(text, cell, "Seeds") == "3"
    assert column(text, cell, "Top-1 last") == "76.20 ± 0.20"
    assert column(text, cell, "Top-1 best") == "76.60 ± 0.20"
    assert column(text, cell, "Paper", 1) == "76.59"  # P-T13 IKL-KD
    assert column(text, cell, "Δ last") == "−0.39" and column(text, cell, "Δ best") == "+0.01"
    assert column(text, cell, "Teacher") == "79.42 ± 0.00" and column(text, cell, "Paper", 0) == "79.42"
    assert "P-T13 row ResNet32×4→ResNet8×4" in column(text, cell, "Paper source")
    # a cell without runs still shows the paper's number
    assert column(text, "kd_cifar100/dkd_res56_res20", "Seeds") == "0"
    assert column(text, "kd_cifar100/dkd_res56_res20", "Paper", 1) == "71.97"
    assert column(text, "kd_cifar100/dkd_res56_res20", "Top-1 last") == "—"
    assert column(text, "kd_cifar100/ikl_res32x4_shuv1", "Paper", 1) == "76.64 ± 0.02"
    assert (tmp_path / "p" / "curves_table13_14_kd_cifar100.png") in written


def test_imagenet_lt_table_shows_the_shot_groups_of_the_last_epoch(tmp_path):
    runs = tmp_path / "runs"
    for seed, many in enumerate([60.0, 62.0]):
        summary = {"acc_last": 49.0 + seed, "acc_best": 49.5 + seed, "teacher_acc": 48.0}
        summary.update(test_acc_many_last=many, test_acc_medium_last=45.0, test_acc_few_last=20.0 + seed)
        fake_run(runs, "kd_imagenet_lt/ikl_x101_r50", seed, dataset="imagenet_lt", epochs=90, summary=summary)
    make_tables.build([runs], ["table5_kd_imagenet_lt"], tmp_path / "t", None, PAPER_DIR)
    text = (tmp_path / "t" / "table5_kd_imagenet_lt.md").read_text()
    cell = "kd_imagenet_lt/ikl_x101_r50"
    assert header(text)[-4:] == ["Many-shot", "Medium-shot", "Few-shot", "Paper source"]  # ours only
    assert column(text, cell, "Many-shot") == "61.00 ± 1.41" and column(text, cell, "Few-shot") == "20.50 ± 0.71"
    assert column(text, cell, "Top-1 last") == "49.50 ± 0.71" and column(text, cell, "Paper", 1) == "49.29"
    assert column(text, cell, "Paper", 0) == "48.02"  # the README's ResNeXt-101 baseline, the teacher
    assert column(text, "kd_imagenet_lt/baseline_x101", "Paper", 1) == "48.02"
    assert "†" not in column(text, cell, "Seeds")


def test_smoke_and_unfinished_runs_are_marked(tmp_path):
    fake_run(
        tmp_path,
        "kd_imagenet/kd_res34_res18",
        0,
        dataset="digits",
        epochs=1,
        summary={"acc_last": 9.0, "acc_best": 9.0},
    )
    fake_run(
        tmp_path,
        "kd_imagenet/ikl_res34_res18",
        0,
        dataset="imagenet",
        epochs=100,
        summary={"epochs": 40, "acc_last": 60.0, "acc_best": 61.0},
    )
    fake_run(
        tmp_path,
        "kd_imagenet/ikl_res50_mv1",
        0,
        dataset="imagenet",
        epochs=100,
        summary={"acc_last": 72.0, "acc_best": 72.5},
    )
    make_tables.build([tmp_path], ["table4_kd_imagenet"], tmp_path / "t", None, PAPER_DIR)
    text = (tmp_path / "t" / "table4_kd_imagenet.md").read_text()
    assert column(text, "kd_imagenet/kd_res34_res18", "Seeds") == "1†"
    assert column(text, "kd_imagenet/ikl_res34_res18", "Seeds") == "1†"
    assert column(text, "kd_imagenet/ikl_res50_mv1", "Seeds") == "1"
    assert column(text, "kd_imagenet/ikl_res50_mv1", "Δ last") == "−0.84"  # 72.00 - 72.84
    assert "† some runs used another data set" in text


def test_runs_that_differ_in_a_setting_get_one_row_each_and_seeds_are_deduplicated(tmp_path):
    for tau, acc in ((1.0, 70.0), (4.0, 76.0)):
        for seed in (0, 1):
            fake_run(
                tmp_path,
                "kd_cifar100/ikl_gi_res32x4_res8x4",
                seed,
                name=f"tau{tau}-s{seed}",
                config={"loss": {"name": "ikl_gi", "prior_temperature": tau}, "logger": {"mode": f"m{seed}"}},
                summary={"acc_last": acc + seed, "acc_best": acc + seed},
            )
    old = fake_run(tmp_path, "kd_cifar100/kd_res32x4_res8x4", 0, name="old", summary={"acc_last": 1.0, "acc_best": 1.0})
    os.utime(old / "summary.json", (1, 1))
    fake_run(tmp_path, "kd_cifar100/kd_res32x4_res8x4", 0, name="new", summary={"acc_last": 73.0, "acc_best": 73.5})
    make_tables.build([tmp_path], ["table13_14_kd_cifar100"], tmp_path / "t", None, PAPER_DIR)
    text = (tmp_path / "t" / "table13_14_kd_cifar100.md").read_text()
    rows = [line for line in text.splitlines() if "`kd_cifar100/ikl_gi_res32x4_res8x4`" in line]
    assert len(rows) == 2
    assert "loss.prior_temperature=1.0" in rows[0] and "70.50 ± 0.71" in rows[0]
    assert "loss.prior_temperature=4.0" in rows[1] and "76.50 ± 0.71" in rows[1]
    assert column(text, "kd_cifar100/kd_res32x4_res8x4", "Seeds") == "1"
    assert column(text, "kd_cifar100/kd_res32x4_res8x4", "Top-1 last") == "73.00"


def test_nested_baselines_and_cached_teachers_are_not_runs(tmp_path):
    run = fake_run(tmp_path, "at_cifar100/ikl_at", 0, epochs=200, summary={"acc_last": 60.0})
    fake_run(run, "at_cifar100/ikl_at", 0, name="ce_baseline", summary={"acc_last": 99.0})
    fake_run(tmp_path, "at_cifar100/ikl_at", 1, name="teacher-cifar100-x-s1", config={"run_name": "teacher-x"})
    runs = make_tables.find_runs([tmp_path])
    assert [r.path for r in runs] == [run]


# ----------------------------------------------------------------------------- AT
def test_at_tables_use_the_autoattack_results(tmp_path):
    pgd = {
        "pgd10": {"robust_acc": 0.37},
        "pgd20": {"robust_acc": 0.365},
        "cw10": {"robust_acc": 0.41},
        "cw20": {"robust_acc": 0.405},
    }
    for seed, (clean, robust) in enumerate([(0.655, 0.318), (0.661, 0.320)]):
        evals = [aa_result("8/255", clean, robust, extra=pgd)]
        evals += [aa_result(f"{e}/255", clean, robust + (8 - e) / 100) for e in (2, 4, 6, 10, 12)]
        evals.append(aa_result("8/255", 0.9, 0.9, n_ex=16))  # a smoke subset: not picked over the full run
        fake_run(
            tmp_path,
            "at_cifar100/ikl_at",
            seed,
            epochs=200,
            summary={"acc_last": 64.0, "acc_best": 65.0, "test_ema_epoch_acc_last": 65.5, "test_pgd_acc_last": 35.0},
            evals=evals,
            curve=[20.0, 40.0],
        )
    fake_run(
        tmp_path,
        "at_cifar100/trades",
        0,
        epochs=200,
        summary={"acc_last": 61.0, "test_ema_epoch_acc_last": 62.0, "test_pgd_acc_last": 30.0},
    )
    names = ["table2_at_cifar100", "table9_tau", "table10_aa_eps", "table11_attacks"]
    written = make_tables.build([tmp_path], names, tmp_path / "t", tmp_path / "p", PAPER_DIR)
    t2 = (tmp_path / "t" / "table2_at_cifar100.md").read_text()
    assert len(table_rows(t2)) == 4
    assert column(t2, "at_cifar100/ikl_at", "Clean") == "65.80 ± 0.42"
    assert column(t2, "at_cifar100/ikl_at", "Paper", 0) == "65.76"
    assert column(t2, "at_cifar100/ikl_at", "Δ", 0) == "+0.04"
    assert column(t2, "at_cifar100/ikl_at", "AA") == "31.90 ± 0.14"
    assert column(t2, "at_cifar100/ikl_at", "Paper", 1) == "31.91"
    assert column(t2, "at_cifar100/ikl_at", "Seeds") == "2"  # full AutoAttack: no ‡
    # TRADES: no evaluation yet, so the training-time EMA accuracy, marked; paper from P-T1 (a)
    assert column(t2, "at_cifar100/trades", "Clean") == "62.00 (train)"
    assert column(t2, "at_cifar100/trades", "Paper", 0) == "62.87"
    assert column(t2, "at_cifar100/trades", "AA") == "—"
    t10 = (tmp_path / "t" / "table10_aa_eps.md").read_text()
    assert column(t10, "at_cifar100/ikl_at", "AA ε=2/255") == "37.90 ± 0.14"
    assert column(t10, "at_cifar100/ikl_at", "Paper", 1) == "55.31"
    assert column(t10, "at_cifar100/ikl_at", "Paper", 0) == "63.40"  # P-T10's clean for IKL-AT
    t11 = (tmp_path / "t" / "table11_attacks.md").read_text()
    assert column(t11, "at_cifar100/ikl_at", "PGD-20") == "36.50 ± 0.00"
    assert column(t11, "at_cifar100/ikl_at", "Paper", 2) == "36.55"
    assert column(t11, "at_cifar100/ikl_at", "Worst case") == "31.90 ± 0.14"
    for plot in ("tau.png", "aa_eps.png", "curves_table2_at_cifar100.png"):
        assert tmp_path / "p" / plot in written and (tmp_path / "p" / plot).stat().st_size > 0


def test_generated_data_tables_compare_with_the_synthetic_rows(tmp_path):
    """The generated-data cells: ours from the ema_iter evaluation (or the iteration EMA's training-time
    accuracy), the paper's synthetic rows beside them; a generated run is comparable in Tables 11/12
    (cifar100_generated) and a smoke run (digits_generated) is marked."""
    ema_iter = {"test_ema_iter_acc_last": 73.0, "test_pgd_acc_last": 40.0}
    fake_run(
        tmp_path,
        "at_generated/ikl_at_cifar100_50m",
        0,
        dataset="cifar100_generated",
        epochs=1600,
        summary=ema_iter,
        evals=[aa_result("8/255", 0.7400, 0.3925, extra={"pgd20": {"robust_acc": 0.4420}})],
    )
    fake_run(tmp_path, "at_generated/trades_cifar100_1m", 0, dataset="cifar100_generated", epochs=400, summary=ema_iter)
    fake_run(tmp_path, "at_generated/ikl_at_cifar10_20m", 0, dataset="digits_generated", epochs=1, summary=ema_iter)
    names = ["table2_at_cifar100_generated", "table3_at_cifar10_generated", "table11_attacks", "table12_robustbench"]
    make_tables.build([tmp_path], names, tmp_path / "t", None, PAPER_DIR)
    t2 = (tmp_path / "t" / "table2_at_cifar100_generated.md").read_text()
    assert len(table_rows(t2)) == 4
    cell = "at_generated/ikl_at_cifar100_50m"
    assert column(t2, cell, "Clean") == "74.00" and column(t2, cell, "Paper", 0) == "73.85"
    assert column(t2, cell, "AA") == "39.25" and column(t2, cell, "Paper", 1) == "39.18"
    assert column(t2, cell, "Seeds") == "1"
    trades = "at_generated/trades_cifar100_1m"
    assert column(t2, trades, "Clean") == "73.00 (train)" and column(t2, trades, "Paper", 0) == "68.06"
    t3 = (tmp_path / "t" / "table3_at_cifar10_generated.md").read_text()
    assert column(t3, "at_generated/ikl_at_cifar10_20m", "Seeds") == "1†"
    assert column(t3, "at_generated/ikl_at_cifar10_20m", "Paper", 0) == "92.16"
    assert column(t3, "at_generated/trades_cifar10_20m", "Paper", 1) == "67.31"
    t11 = (tmp_path / "t" / "table11_attacks.md").read_text()
    assert column(t11, cell, "Seeds") == "1" and column(t11, cell, "PGD-20") == "44.20"
    assert column(t11, cell, "Paper", 2) == "44.12"
    t12 = (tmp_path / "t" / "table12_robustbench.md").read_text()
    assert column(t12, cell, "Seeds") == "1" and column(t12, cell, "Paper", 1) == "39.18"


def test_a_subset_autoattack_is_marked(tmp_path):
    fake_run(
        tmp_path,
        "at_cifar10/ikl_at",
        0,
        dataset="cifar10",
        epochs=200,
        summary={"acc_last": 80.0},
        evals=[aa_result("8/255", 0.8, 0.5, n_ex=100)],
    )
    make_tables.build([tmp_path], ["table3_at_cifar10"], tmp_path / "t", None, PAPER_DIR)
    text = (tmp_path / "t" / "table3_at_cifar10.md").read_text()
    assert column(text, "at_cifar10/ikl_at", "Seeds") == "1‡"
    assert (
        column(text, "at_cifar10/ikl_at", "AA") == "50.00" and column(text, "at_cifar10/ikl_at", "Paper", 1) == "57.09"
    )


def test_unknown_table_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="unknown table"):
        make_tables.build([tmp_path], ["table99"], tmp_path, None, PAPER_DIR)


# ----------------------------------------------------------------------------- no runs, and where tables go
def run_make_tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_tables.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("exists", [True, False], ids=["empty_folder", "missing_folder"])
def test_no_runs_is_one_line_and_exit_1_with_nothing_written(tmp_path, exists):
    runs = tmp_path / "runs"
    if exists:
        (runs / "not-a-run").mkdir(parents=True)  # a folder without summary.json/config.yaml is no run
    proc = run_make_tables("--runs", str(runs), "--out", str(tmp_path / "t"), "--plots", str(tmp_path / "p"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(runs) in lines[0] and "no runs" in lines[0] and "scripts/" in lines[0]
    assert ("does not exist" in lines[0]) is not exists
    assert not (tmp_path / "t").exists() and not (tmp_path / "p").exists()


def test_a_table_without_runs_of_its_cells_is_not_written(tmp_path, capsys):
    fake_run(tmp_path / "runs", "kd_imagenet/ikl_res34_res18", 0, dataset="imagenet", summary={"acc_last": 71.0})
    out = tmp_path / "t"
    written = make_tables.build([tmp_path / "runs"], ["table4_kd_imagenet", "table9_tau"], out, None, PAPER_DIR)
    assert written == [out / "table4_kd_imagenet.md"]
    assert not (out / "table9_tau.md").exists()
    err = capsys.readouterr().err
    assert "table9_tau: no run of its cells" in err and "scripts/sweep_tau.sh" in err
    with pytest.raises(SystemExit, match=r"none of the cells of table9_tau.*scripts/sweep_tau.sh"):
        make_tables.build([tmp_path / "runs"], ["table9_tau"], tmp_path / "t2", None, PAPER_DIR)
    assert not (tmp_path / "t2").exists()


def test_default_outputs_are_ignored_by_git_and_not_under_results():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    args = make_tables.build_parser().parse_args([])
    for path in (args.out, args.plots, *args.runs):
        assert ROOT / "outputs" in path.parents, path
        probe = path / "table1_at.md"
        proc = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT, capture_output=True)
        assert proc.returncode == 0, f"{probe} is not git-ignored"
    assert args.paper == ROOT / "results" / "paper"  # read only


# ----------------------------------------------------------------------------- the paper's numbers
def paper_rows() -> list[dict[str, str]]:
    rows = []
    for path in sorted(PAPER_DIR.glob("*.csv")):
        with path.open(newline="") as handle:
            rows += list(csv.DictReader(handle))
    return rows


def test_paper_csvs_name_real_cells_and_sources():
    for row in paper_rows():
        assert row["source"].strip(), row
        float(row["value"])
        for cell in filter(None, row["cell"].split(";")):
            assert cell in EXPERIMENT_CELLS, f"{cell} has no configs/experiment file"


def test_every_table_cell_is_an_experiment_with_a_paper_number():
    paper = make_tables.load_paper(PAPER_DIR)
    no_paper_number = {"at_cifar100/trades_autoaug", "at_cifar10/trades_autoaug"}
    for table in make_tables.TABLES.values():
        for cell in table.cells:
            assert cell in EXPERIMENT_CELLS, cell
            values = [make_tables.paper_value(paper, table, cell, m) for m in table.metrics]
            if cell not in no_paper_number:
                assert any(values), f"{table.name}: no paper number for {cell}"


# Spot checks typed from PAPER.md §5 (table, cell, metric, value).
PAPER_SPOT_CHECKS = [
    ("P-T13", "kd_cifar100/ikl_res56_res20", "top1", 71.44),
    ("P-T13", "kd_cifar100/ikl_gi_wrn40_2_wrn_16_2", "top1", 76.45),
    ("P-T13", "kd_cifar100/dkd_vgg13_vgg8", "top1", 74.68),
    ("P-T14", "kd_cifar100/kd_res50_mv2", "top1", 67.35),
    ("P-T14", "kd_cifar100/ikl_res32x4_shuv2", "top1", 77.16),
    ("P-T14", "kd_teachers/ResNet50", "teacher_top1", 79.34),
    ("P-T4", "kd_imagenet/ikl_res50_mv1", "top1", 72.84),
    ("P-T4", "kd_imagenet/kd_res34_res18", "top1", 71.03),
    ("P-T2", "at_cifar100/ikl_at_autoaug", "aa", 32.53),
    ("P-T3", "at_cifar10/ikl_at", "clean", 84.80),
    ("P-T3", "at_cifar10/ikl_at_autoaug", "aa", 57.62),
    ("P-T1", "at_ablation/dkl_ba", "aa", 30.42),
    ("P-T1", "kd_ablation/dkl_ba_res34_res18", "top1", 71.80),
    ("P-T9", "at_ablation/tau1", "clean", 59.99),
    ("P-T7", "at_ablation/wmse24", "aa", 31.64),
    ("P-T8", "at_ablation/sce2", "clean", 66.13),
    ("P-T10", "at_cifar100/trades", "aa_eps12", 19.17),
    ("P-T10", "at_cifar100/ikl_at", "aa_eps_avg", 36.38),
    ("P-T11", "at_cifar100/ikl_at_autoaug", "cw20", 40.86),
    ("P-T2", "at_generated/ikl_at_cifar100_50m", "aa", 39.18),
    ("P-T3", "at_generated/ikl_at_cifar10_20m", "clean", 92.16),
    ("log", "at_generated/ikl_at_cifar10_20m", "aa", 67.73),
    ("RD-A", "at_generated/ikl_at_cifar100_1m", "clean", 68.99),
    ("RD-A", "at_generated/trades_cifar10_1m", "aa", 63.35),
    ("RD-A", "at_generated/trades_cifar100_50m", "clean", 72.58),
    ("P-T11", "at_generated/ikl_at_cifar100_50m", "pgd10", 44.43),
    ("P-T12", "at_generated/ikl_at_cifar100_50m", "clean", 73.85),
    ("RB", "at_generated/ikl_at_cifar10_20m", "aa", 67.73),
    ("P-T5", "kd_imagenet_lt/ikl_x101_r50", "top1", 49.29),
    ("P-T5", "kd_imagenet_lt/kl_x101_r18", "top1", 44.32),
    ("RD-LT", "kd_imagenet_lt/ikl_r18_r18", "top1", 43.062),
    ("RD-LT", "kd_imagenet_lt/baseline_x101", "top1", 48.024),
    ("RD-LT", "kd_imagenet_lt/kl_r50_r50", "teacher_top1", 45.476),
    ("P-T15", "kd_strong/ikl_beitl_res50", "top1", 80.98),
    ("P-T15", "kd_strong/dkd_beitl_res50", "top1", 80.77),
]


@pytest.mark.parametrize("table,cell,metric,value", PAPER_SPOT_CHECKS)
def test_paper_numbers_match_paper_md(table, cell, metric, value):
    assert make_tables.load_paper(PAPER_DIR)[(table, cell, metric)].value == value


def test_paper_csvs_cover_sections_5_1_to_5_4():
    tables = {row["table"] for row in paper_rows()}
    assert tables >= {"P-T1", "P-T2", "P-T3", "P-T4", "P-T5", "P-T7", "P-T8", "P-T9", "P-T10", "P-T11", "P-T12"}
    assert tables >= {"P-T13", "P-T14", "P-T15", "RD-A", "RD2-A", "RD-K", "RD2-K", "RD-LT", "log"}
    methods = {row["column"] for row in paper_rows()} | {row["row"] for row in paper_rows()}
    for baseline in ("ReviewKD", "CRD", "LBGAT", "LAS-AT", "ACAT", "DAJAT", "Wang et al. 50M", "Rice et al."):
        assert baseline in methods, baseline
