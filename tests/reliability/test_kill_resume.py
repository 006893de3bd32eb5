"""SIGKILL (no handler runs) mid-epoch, mid-evaluation and mid-save; resume gives the uninterrupted run.

Each chain runs one real run and kills it several times, resuming (``resume=true``, same run dir)
after each kill; the kill points are drawn from a seeded RNG. After every kill the checkpoint on
disk must load; after the last resume, every checkpoint (weights, optimizer, scheduler, RNG, class
prior, EMA) and every metric record must equal those of an uninterrupted run. The AutoAttack chain
does the same for ``eval_autoattack.py`` and its ``aa_state.pt``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ikl.cli import rundir
from ikl.cli.rundir import RunIdentity
from ikl.engine.checkpoint import load_checkpoint, save_checkpoint
from ikl.errors import CheckpointError
from tests.reliability.helpers import (
    AT_OVERRIDES,
    Proc,
    compare_runs,
    isolated,
    job,
    kd_overrides,
    last_epoch,
)
from tests.reliability.report import REPORT

pytestmark = pytest.mark.slow

STEPS = 4  # 64 training images, batches of 16
RNG = random.Random(20241128)  # the kill points: random, and the same in every run of the suite
KD_KILLS = [
    ("step", RNG.randint(1, STEPS - 1)),  # epoch 1, before the first checkpoint exists
    ("step", RNG.randint(STEPS + 1, 2 * STEPS - 1)),  # mid-way through epoch 2
    ("eval", 2),  # epoch 2's evaluation, after its first test batch
    ("save", 2),  # while epoch 2's last.pt is being written (IKL_TEST_PAUSE_IN_SAVE)
]
AT_KILLS = [("step", RNG.randint(STEPS + 1, 2 * STEPS - 1)), ("save", 2)]
PAUSE_IN_SAVE = "2"


def _describe(point: str, value: int) -> str:
    if point == "step":
        epoch, batch = (value - 1) // STEPS + 1, (value - 1) % STEPS + 1
        return f"SIGKILL after step {value} (epoch {epoch}, batch {batch}/{STEPS})"
    if point == "eval":
        return f"SIGKILL during epoch {value}'s evaluation"
    return f"SIGKILL while epoch {value}'s last.pt is being written"


def _temp_files(run_dir: Path) -> set[Path]:
    return set((run_dir / "checkpoints").glob(".last.pt.*.tmp"))


def kill_chain(script: str, common: list[str], tmp: Path, kills: list[tuple[str, int]]) -> dict:
    """Run, kill at each point in turn (resuming in between), then resume to the end."""
    run_dir = tmp / "run"
    args = [*common, *isolated(tmp), f"run_dir={run_dir}"]
    observed = []
    for link, (point, value) in enumerate(kills):
        resume = ["resume=true"] if link else []
        before = last_epoch(run_dir)
        marker = tmp / f"hang-{link}"
        if point == "save":
            old_temps = _temp_files(run_dir)
            proc = Proc(
                script, [*args, *resume], logs=tmp / f"link{link}", env={"IKL_TEST_PAUSE_IN_SAVE": PAUSE_IN_SAVE}
            )
            proc.wait_for(lambda old=old_temps: bool(_temp_files(run_dir) - old), "last.pt's temporary file appears")
        else:
            hang = {"IKL_TEST_HANG_AFTER_STEP" if point == "step" else "IKL_TEST_HANG_IN_EVAL": str(value)}
            proc = Proc(
                script,
                [*args, *resume],
                logs=tmp / f"link{link}",
                env={**hang, "IKL_TEST_HANG_MARKER": str(marker)},
                hooked=True,
            )
            proc.wait_for(marker.exists, f"the run reaching {point} {value}")
        proc.kill()
        after = last_epoch(run_dir)  # asserts that whatever last.pt is on disk loads
        observed.append(
            {
                "kill": _describe(point, value),
                "resumed_from": before,
                "epoch_on_disk": after,
                "temp_left": bool(_temp_files(run_dir)),
                "stdout": proc.stdout_path.read_text(),
            }
        )
    final = Proc(script, [*args, "resume=true"], logs=tmp / "final")
    assert final.finish() == 0, final.stderr[-3000:]
    return {"run_dir": run_dir, "observed": observed, "temp_left": bool(_temp_files(run_dir))}


@job("kd-kill-chain", priority=2)
def kd_kill_chain(tmp: Path, shared: dict) -> dict:
    return kill_chain("train_kd.py", kd_overrides(shared["teacher"]), tmp, KD_KILLS)


@job("at-kill-chain", priority=0)
def at_kill_chain(tmp: Path, shared: dict) -> dict:
    return kill_chain("train_at.py", AT_OVERRIDES, tmp, AT_KILLS)


def _check_chain(result: dict, reference: Path, entry: str, kills: list[tuple[str, int]]) -> None:
    compared = compare_runs(reference, result["run_dir"])
    for (point, value), seen in zip(kills, result["observed"], strict=True):
        started = "started afresh" if seen["resumed_from"] is None else f"resumed from epoch {seen['resumed_from']}"
        if point == "save":
            # the write was cut: the previous last.pt is on disk, whole, and is the previous epoch's
            assert seen["temp_left"] and seen["epoch_on_disk"] == value - 1
            happened = (
                f"killed mid-write (temporary file left); last.pt on disk loads and is epoch {value - 1}'s; "
                "the next save removed the temporary file"
            )
        elif seen["epoch_on_disk"] is None:
            assert "dropping" not in seen["stdout"]
            happened = "no checkpoint yet; resume=true started afresh and dropped the killed attempt's metric records"
        else:
            happened = f"last.pt on disk loads (epoch {seen['epoch_on_disk']})"
        REPORT.add("kill", f"{seen['kill']} (this attempt {started})", entry, happened, "checkpoint loads; see below")
    assert not result["temp_left"], "a killed save's temporary file was never cleaned up"
    REPORT.add(
        "kill",
        f"resume=true after the last kill, run to the end ({len(kills)} kills in all)",
        entry,
        f"{compared['files']} checkpoint files ({compared['tensors']} tensors: weights, optimizer, scheduler, RNG, "
        f"class prior{', EMA' if 'at' in entry else ''}) and {compared['records']} metric records equal the uninterrupted run",
        "yes: bit-identical",
    )


@pytest.mark.jobs("kd-kill-chain", "kd-uninterrupted-1")
def test_train_kd_survives_sigkill_anywhere(jobs):
    result = jobs.get("kd-kill-chain")
    _check_chain(result, jobs.get("kd-uninterrupted-1"), "train_kd.py (loss=ikl_gi)", KD_KILLS)
    fresh = result["observed"][1]["stdout"]  # the run that resumed after the epoch-1 kill
    assert "dropping" in fresh and "records of an earlier attempt" in fresh


@pytest.mark.jobs("at-kill-chain", "at-uninterrupted-1")
def test_train_at_survives_sigkill_with_ema(jobs):
    result = jobs.get("at-kill-chain")
    final = load_checkpoint(result["run_dir"] / "checkpoints" / "last.pt")
    assert {"ema_epoch", "ema_iter", "criterion"} <= set(final["task"])
    _check_chain(result, jobs.get("at-uninterrupted-1"), "train_at.py (ikl_at, AWP, EMA)", AT_KILLS)


def test_resume_true_with_an_explicit_run_dir_never_continues_another_run(tmp_path):
    """A killed first attempt has no checkpoint: resume=true must start it afresh, not pick (and
    write into) the latest other run of the same name (and even the same identity) under out_dir."""
    identity = RunIdentity("kd", {"loss.name": "ikl"})
    other = tmp_path / "outputs" / "kd-digits-ikl-resnet20-resnet8-s0" / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "run.json").write_text(json.dumps({"format": "ikl-run", "identity": identity.to_dict()}))
    save_checkpoint({"epoch": 3}, other / "checkpoints" / "last.pt")
    plan = rundir.plan_run(
        identity=identity,
        resume=True,
        run_dir=str(tmp_path / "mine"),
        default_dir=tmp_path / "default",
        out_dir=tmp_path / "outputs",
    )
    assert (plan.run_dir, plan.resume_from) == (tmp_path / "mine", None)
    REPORT.add(
        "kill",
        "resume=true in an explicit run_dir that has no checkpoint, beside another run of the same name",
        "rundir.plan_run",
        "starts afresh in run_dir (before the fix it continued, and wrote into, the other run)",
        "yes: the other run is untouched",
    )


# ---------------------------------------------------------------------------------- AutoAttack
AA_ATTACKS = ["apgd-ce", "apgd-dlr"]


def _aa_args(checkpoint: Path, out: Path) -> list[str]:
    return [
        f"checkpoint={checkpoint}",
        "dataset=digits",
        "n_ex=4",
        "batch_size=2",
        "eps=5/255",  # this model keeps 3 of 4 points against apgd-ce there, so apgd-dlr has work
        "save_every=1",
        "version=custom",
        f"attacks=[{','.join(AA_ATTACKS)}]",
        f"output_dir={out}",
        "results_dir=null",
        "logger.mode=disabled",
        "device=cpu",
    ]


def _make_aa_model(shared: dict) -> None:
    """resnet8 fitted to the 8 evaluated digits, so the attacks have robust points to work on."""
    from ikl.data import digits_datasets
    from ikl.eval.runner import take_examples
    from ikl.models import create_model

    torch.manual_seed(0)
    x, y = take_examples(digits_datasets(normalize=False).test, 8)
    model = create_model("resnet8", 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for module in model.modules():  # running statistics = these images' statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(x)
    model.eval()
    state = {"format": "ikl-checkpoint", "model": model.state_dict(), "model_name": "resnet8", "num_classes": 10}
    save_checkpoint({**state, "input_normalization": None}, shared["base"] / "aa_model.pt")
    shared["aa_model"] = shared["base"] / "aa_model.pt"


def _state_done(path: Path) -> list[str]:
    try:
        return list(load_checkpoint(path)["done"]) if path.is_file() else []
    except CheckpointError:
        return []


@job("autoattack-kill", priority=2, prepare=_make_aa_model)
def autoattack_kill(tmp: Path, shared: dict) -> dict:
    model = shared["aa_model"]
    reference = Proc("eval_autoattack.py", _aa_args(model, tmp / "reference"), logs=tmp / "ref-logs")
    victim_args = _aa_args(model, tmp / "victim")
    victim = Proc("eval_autoattack.py", victim_args, logs=tmp / "victim-logs")
    state = tmp / "victim" / "aa_state.pt"
    victim.wait_for(lambda: _state_done(state) == AA_ATTACKS[:1], "apgd-ce finishing")
    victim.kill()
    killed_state = load_checkpoint(state)
    assert not (tmp / "victim" / "result.json").exists()
    resumed = Proc("eval_autoattack.py", victim_args, logs=tmp / "resumed-logs")
    assert resumed.finish() == 0, resumed.stderr[-3000:]
    assert reference.finish() == 0, reference.stderr[-3000:]
    return {"tmp": tmp, "killed_done": list(killed_state["done"]), "killed_pending": killed_state["pending"]}


@pytest.mark.jobs("autoattack-kill")
def test_autoattack_killed_mid_run_resumes_without_redoing_finished_attacks(jobs):
    result = jobs.get("autoattack-kill")
    tmp = result["tmp"]
    ref = json.loads((tmp / "reference" / "result.json").read_text())
    got = json.loads((tmp / "victim" / "result.json").read_text())
    assert result["killed_done"] == ["apgd-ce"]
    aa_ref, aa_got = ref["evaluations"]["autoattack"], got["evaluations"]["autoattack"]
    assert aa_got["resumed_attacks"] == ["apgd-ce"] and aa_ref["resumed_attacks"] == []
    for key in ("clean_acc", "robust_acc", "robust_acc_by_stage", "worst_case_robust_acc", "verification"):
        assert got[key] == ref[key], key
    assert got["verification_passed"] is True
    a, b = load_checkpoint(tmp / "reference" / "aa_state.pt"), load_checkpoint(tmp / "victim" / "aa_state.pt")
    for key in ("clean", "robust", "adv_index", "adv_images"):
        assert torch.equal(a[key], b[key]), key
    log = (tmp / "victim" / "eval.log").read_text()
    second_run = log[log.rindex("evaluating ") :]
    assert "skipping apgd-ce: finished in a previous run" in second_run
    assert "running apgd-ce" not in second_run and "running apgd-dlr" in second_run
    stage = got["robust_acc_by_stage"]
    REPORT.add(
        "kill",
        "SIGKILL during apgd-dlr, once aa_state.pt records apgd-ce as done (custom [apgd-ce, apgd-dlr], n_ex=4, "
        "eps=5/255, a state save every batch of 2)",
        "eval_autoattack.py",
        "aa_state.pt on disk loads (done: [apgd-ce]); rerunning the same command logged 'skipping apgd-ce: "
        "finished in a previous run' and ran only apgd-dlr",
        f"yes: clean/robust accuracy by stage {stage}, robust mask and adversarial examples equal an "
        "uninterrupted evaluation",
    )
