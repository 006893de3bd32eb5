"""Every config group with wrong values: one line each, exit != 0, no traceback, before any training.

The cases run through the real command line in this process (``helpers.cli``: Hydra's parsing,
composition and error reporting, then the entry point's ``main``), which costs a fraction of a
second instead of ~8 s of interpreter start-up; two of them are repeated in real subprocesses to
show the output is the same. The table goes to ``results/reliability.md``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import AT_OVERRIDES, Proc, cli, isolated, job, kd_overrides
from tests.reliability.report import REPORT

pytestmark = pytest.mark.slow

EMPTY_ROOT = "<empty dir>"

# (entry point, overrides, what the first line must contain)
CASES: list[tuple[str, str, str]] = [
    # unknown names in every config group
    ("train_kd.py", "dataset=bogus", "Could not find 'dataset/bogus'"),
    ("train_kd.py", "student=bogus", "Could not find 'student/bogus'"),
    ("train_kd.py", "teacher=bogus", "Could not find 'teacher/bogus'"),
    ("train_kd.py", "loss=bogus", "Could not find 'loss/bogus'"),
    ("train_kd.py", "optimizer=adamw", "Could not find 'optimizer/adamw'"),
    ("train_kd.py", "scheduler=bogus", "Could not find 'scheduler/bogus'"),
    ("train_kd.py", "trainer=bogus", "Could not find 'trainer/bogus'"),
    ("train_kd.py", "logger=bogus", "Could not find 'logger/bogus'"),
    ("train_kd.py", "recipe=bogus", "Could not find 'recipe/bogus'"),
    ("train_at.py", "model=bogus", "Could not find 'model/bogus'"),
    ("train_at.py", "loss=bogus", "Could not find 'loss/bogus'"),
    ("eval_autoattack.py", "model=bogus", "Could not find 'model/bogus'"),
    ("eval_autoattack.py", "dataset=bogus", "Could not find 'dataset/bogus'"),
    # temperatures <= 0, negative weights
    ("train_kd.py", "loss=ikl loss.temperature=0", "loss.temperature=0 must be > 0"),
    ("train_kd.py", "loss.prior_temperature=-1", "loss.prior_temperature=-1 must be > 0"),
    ("train_kd.py", "loss=kd loss.temperature=-4", "loss.temperature=-4 must be > 0"),
    ("train_at.py", "loss.temperature=0", "loss.temperature=0 must be > 0"),
    ("train_kd.py", "loss.wmse_weight=-1", "loss.wmse_weight=-1 must be >= 0"),
    ("train_kd.py", "loss.sce_weight=-0.5", "loss.sce_weight=-0.5 must be >= 0"),
    ("train_kd.py", "loss.ce_weight=-1", "loss.ce_weight=-1 must be >= 0"),
    ("train_kd.py", "loss=dkd loss.beta=-8", "must be >= 0"),
    ("train_at.py", "aug_weight=-1", "aug_weight=-1 must be >= 0"),
    ("train_at.py", "awp.gamma=-0.005", "awp.gamma=-0.005 must be >= 0"),
    ("train_at.py", "attack.wmse_weight=-1", "attack.wmse_weight=-1 must be >= 0"),
    # the perturbation radius
    ("train_at.py", "attack.eps=1.5", "attack.eps=1.5 must be in [0, 1]"),
    ("train_at.py", "attack.eps=-0.1", "attack.eps=-0.1 must be in [0, 1]"),
    ("train_at.py", "attack.eps=0.031", "eps=0.031 is not 8/255"),
    ("train_at.py", "monitor.eps=0.03", "eps=0.03 is not"),
    ("train_at.py", "monitor.step_size=2", "monitor.step_size=2 must be in [0, 1]"),
    ("eval_autoattack.py", "eps=0.031", "eps=0.031 is not 8/255"),
    ("eval_autoattack.py", "eps=2", "eps=2 is outside [0, 1]"),
    # sizes and counts
    ("train_kd.py", "batch_size=0", "batch_size=0 must be a positive whole number"),
    ("train_kd.py", "test_batch_size=-2", "test_batch_size=-2 must be a positive whole number"),
    ("train_kd.py", "trainer.epochs=0", "trainer.epochs=0 must be a positive whole number"),
    ("train_kd.py", "trainer.log_every=0", "trainer.log_every=0 must be a positive whole number"),
    ("train_kd.py", "trainer.save_every=0", "trainer.save_every=0 must be a positive whole number"),
    ("train_kd.py", "trainer.workers=-1", "trainer.workers=-1 must be >= 0"),
    ("train_kd.py", "seed=abc", "seed='abc' must be a whole number"),
    ("train_kd.py", "seed=1.5", "seed=1.5 must be a whole number"),
    ("train_kd.py", "trainer.epochs=2.5", "trainer.epochs=2.5 must be a whole number"),
    ("train_kd.py", "trainer.epochs=null", "trainer.epochs is null but needs a value"),
    ("train_kd.py", "batch_size=sixteen", "batch_size='sixteen' must be a whole number"),
    (
        "train_kd.py",
        "trainer.epoch=3",
        "trainer.epoch=3: train_kd has no key 'trainer.epoch'; did you mean trainer.epochs?",
    ),
    ("train_at.py", "atack.eps=0.1", "train_at has no key 'atack.eps'; did you mean attack.eps?"),
    ("train_kd.py", "trainer.channels_last=maybe", "trainer.channels_last='maybe' must be true or false"),
    ("train_kd.py", "run_name=" + "r" * 240, "run_name is 240 bytes long"),
    ("train_kd.py", "run_name=..", "must be a non-empty folder name"),
    ("train_at.py", "monitor.samples=-1", "monitor.samples=-1 must be >= 0"),
    ("eval_autoattack.py", "n_ex=0", "n_ex=0 must be positive"),
    # optimisation
    ("train_kd.py", "optimizer.lr=0", "optimizer.lr=0 must be > 0"),
    ("train_kd.py", "optimizer.momentum=-0.9", "optimizer.momentum=-0.9 must be in [0, 1)"),
    ("train_kd.py", "optimizer.momentum=1.5", "optimizer.momentum=1.5 must be in [0, 1)"),
    ("train_kd.py", "optimizer.weight_decay=-5e-4", "optimizer.weight_decay=-0.0005 must be >= 0"),
    ("train_kd.py", "optimizer.lr=null", "optimizer.lr is null but needs a value"),
    ("train_kd.py", "optimizer.lr=nan", "optimizer.lr=nan must be a finite number"),
    ("train_kd.py", "optimizer.lr=inf", "optimizer.lr=inf must be a finite number"),
    ("train_kd.py", "optimizer.nesterov=true optimizer.momentum=0", "optimizer: Nesterov momentum requires"),
    ("train_kd.py", "scheduler.gamma=-1", "scheduler.gamma=-1 must be >= 0"),
    ("train_kd.py", "trainer.grad_clip=-1", "trainer.grad_clip=-1 must be > 0"),
    ("train_at.py", "ema.epoch_decay=1.5", "ema.epoch_decay=1.5 must be in [0, 1)"),
    ("train_at.py", "ema.iter_start=2", "ema.iter_start=2 must be in [0, 1]"),
    ("train_at.py", "attack.budget=bogus", "attack.budget='bogus' is not one of as_run, as_described, low"),
    # data, teacher, classes
    ("train_kd.py", f"dataset=cifar10 dataset.builder.root={EMPTY_ROOT} dataset.builder.download=false", "not found"),
    ("train_kd.py", "teacher.checkpoint=<tmp>/missing/teacher.pth", "missing/teacher.pth does not exist"),
    ("train_kd.py", "teacher.checkpoint=null teacher.auto_train_epochs=0", "no teacher checkpoint for resnet8"),
    ("train_kd.py", "loss=ikl_gi dataset.num_classes=100", "dataset.num_classes=100 but the data has 10 classes"),
    ("train_kd.py", "resume=<tmp>/no-such-run", "no such run dir or checkpoint file"),
    ("train_kd.py", "teacher.checkpoint=<tmp>", "is a directory, not a checkpoint file"),
    ("train_kd.py", "teacher.checkpoint=<tmp>/zero.pth", "is empty (0 bytes"),
    ("train_kd.py", "init_from=<tmp>/missing.pt", "missing.pt does not exist; give a checkpoint file"),
    ("train_kd.py", "teacher.expected_acc=99", "expected 99"),
    # engine, device, logger
    ("train_kd.py", "trainer.amp=fp8", "trainer.amp='fp8' is not one of"),
    ("train_kd.py", "trainer.device=cuda", "trainer.device=cuda but no CUDA device is visible"),
    ("train_kd.py", "trainer.device=tpu", "trainer.device='tpu' is not a device"),
    ("train_kd.py", "trainer.loader=bogus", "trainer.loader='bogus' is not one of"),
    ("train_kd.py", "trainer.cuda_graphs=true", "trainer.cuda_graphs=true: it needs a CUDA device"),
    ("train_kd.py", "trainer.cuda_graphs=true trainer.amp=fp16", "use trainer.amp=bf16 or off"),
    ("train_at.py", "trainer.cuda_graphs=true", "trainer.cuda_graphs=true: AdversarialTask is not graph-safe"),
    ("train_at.py", "attack.precision=bf16", "attack.precision='bf16' is not one of fp32, amp"),
    ("train_kd.py", "logger.mode=bogus", "logger.mode='bogus' is not one of"),
    ("eval_autoattack.py", "device=cuda", "device=cuda but no CUDA device is visible"),
    ("eval_autoattack.py", "version=bogus", "version='bogus' is not one of"),
    ("eval_autoattack.py", "norm=L3", "norm='L3' is not one of"),
    ("eval_autoattack.py", "version=custom attacks=[pgd]", "unknown attack(s) ['pgd']"),
    ("eval_autoattack.py", "evaluations=[pgd-20]", "unknown evaluation 'pgd-20'"),
]
IN_SUBPROCESS = [
    ("train_kd.py", "dataset=bogus"),
    ("train_kd.py", "batch_size=0"),
]  # spot checks: the same output from a real interpreter


def base_args(script: str, tmp: Path, teacher: Path) -> list[str]:
    if script == "eval_autoattack.py":
        safe = ["n_ex=4", "batch_size=4", "version=custom", "attacks=[apgd-ce]", f"output_dir={tmp / 'out'}"]
        return [
            f"checkpoint={teacher}",
            "model=resnet8",
            "dataset=digits",
            *safe,
            "logger.mode=disabled",
            "results_dir=null",
        ]
    common = kd_overrides(teacher) if script == "train_kd.py" else AT_OVERRIDES
    return [*common, *isolated(tmp), f"run_dir={tmp / 'run'}"]


def case_args(overrides: str, tmp: Path) -> list[str]:
    (tmp / "empty").mkdir(exist_ok=True)
    (tmp / "zero.pth").write_bytes(b"")
    return overrides.replace(EMPTY_ROOT, str(tmp / "empty")).replace("<tmp>", str(tmp)).split()


@job("config-subprocesses", priority=6)
def config_subprocesses(tmp: Path, shared: dict) -> dict[tuple[str, str], tuple[int, str]]:
    out = {}
    for script, overrides in IN_SUBPROCESS:
        case_tmp = tmp / overrides.split("=")[0]
        case_tmp.mkdir()
        args = [*base_args(script, case_tmp, shared["teacher"]), *case_args(overrides, case_tmp)]
        proc = Proc(script, [*args, "hydra/job_logging=none", "hydra/hydra_logging=none"], logs=case_tmp / "logs")
        out[script, overrides] = (proc.finish(), proc.stderr.replace(str(case_tmp), "<case>"))
    return out


@pytest.mark.jobs("config-subprocesses")
def test_every_bad_value_is_one_line_before_training(tmp_path, shared_files, jobs):
    failures = []
    seen = {}
    for index, (script, overrides, expected) in enumerate(CASES):
        if "cuda" in overrides and torch.cuda.is_available():
            continue  # the case is about a machine without a GPU
        case_tmp = tmp_path / f"case{index}"
        case_tmp.mkdir()
        code, stderr = cli(
            script, [*base_args(script, case_tmp, shared_files["teacher"]), *case_args(overrides, case_tmp)]
        )
        lines = stderr.strip().splitlines()
        first = lines[0] if lines else ""
        seen[script, overrides] = (code, stderr.replace(str(case_tmp), "<case>"))
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if "Traceback" in stderr:
            problems.append("a traceback")
        if expected not in first:
            problems.append(f"first line lacks {expected!r}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines")
        if (case_tmp / "run" / "checkpoints").exists():
            problems.append("a checkpoints dir was created")
        if problems:
            failures.append(f"{script} {overrides}: {', '.join(problems)}\n{stderr[-1500:]}")
        REPORT.add(
            "config", script, overrides.replace(str(case_tmp), "<tmp>"), code, first.replace(str(case_tmp), "<tmp>")
        )
    assert not failures, "\n".join(failures)
    for case, real in jobs.get("config-subprocesses").items():
        assert real == seen[case], f"{case}: in-process {seen[case]} vs subprocess {real}"


def test_unknown_augmentation_is_one_line(tmp_path, shared_files):
    args = [*base_args("train_kd.py", tmp_path, shared_files["teacher"]), "dataset.builder.augment=bogus"]
    code, stderr = cli("train_kd.py", args)
    errors = [line for line in stderr.splitlines() if "augment" in line]
    REPORT.add(
        "config",
        "train_kd.py",
        "dataset.builder.augment=bogus",
        code,
        ("a traceback: " if "Traceback" in stderr else "") + (errors[-1].strip() if errors else stderr.strip()[:200]),
    )
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
