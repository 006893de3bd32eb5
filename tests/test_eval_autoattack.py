"""ikl.eval and eval_autoattack.py: exact ε, pre-flight, checkpoint layouts, AutoAttack runs, resume."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from pyautoattack import AutoAttack
from torch import nn
from torch.utils.data import TensorDataset

import ikl.eval.autoattack as aa_module
import ikl.eval.runner as runner_module
from ikl.cli import eval_autoattack
from ikl.engine.checkpoint import save_checkpoint
from ikl.errors import CheckpointError, ConfigError
from ikl.eval import (
    EvalSpec,
    NormalizedModel,
    check_eps,
    eps_looks_mistyped,
    evaluate,
    load_eval_model,
    parse_eps,
    preflight,
    prepare_for_evaluation,
    run_autoattack,
    verify_adversarial,
)
from ikl.eval.autoattack import fraction, predict
from ikl.models import create_model
from tests.reliability.helpers import cli
from tests.runutils import ROOT, compose_config, run_entry

EPS = 8 / 255
RESULT_FIELDS = {
    "clean_acc",
    "robust_acc",
    "robust_acc_by_stage",
    "eps",
    "eps_float",
    "norm",
    "n_ex",
    "version",
    "seed",
    "comparable_to_leaderboard",
    "note",
    "checkpoint",
    "checkpoint_sha256",
    "model",
    "dataset",
    "seconds",
    "torch_version",
    "pyautoattack_version",
    "verification",
    "verification_passed",
    "worst_case_robust_acc",
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------------------------- ε
def test_parse_eps_is_exact():
    assert parse_eps("8/255") == 8 / 255  # bit-identical float
    assert parse_eps(" 4 / 255 ") == 4 / 255
    assert parse_eps("0.03137") == 0.03137
    assert parse_eps(1) == 1.0 and parse_eps(0) == 0.0
    assert check_eps("8/255") == 8 / 255 and check_eps(0.1) == 0.1 and check_eps(0.3) == 0.3


@pytest.mark.parametrize("value", [0.031, 0.03, "0.0314", 0.03137])
def test_truncated_eps_is_refused_with_a_clear_message(value):
    with pytest.raises(ConfigError) as info:
        check_eps(value)
    message = str(info.value)
    assert "\n" not in message and "8/255" in message and "allow_inexact_eps=true" in message
    assert check_eps(value, allow_inexact=True) == float(value)
    assert eps_looks_mistyped(float(value)) == 8


@pytest.mark.parametrize("value", [1.5, "2", -0.01, "abc", float("nan")])
def test_eps_outside_unit_interval_or_garbage_is_refused(value):
    with pytest.raises(ConfigError, match="eps="):
        parse_eps(value)


# ---------------------------------------------------------------------------------------- models
class LinearNet(nn.Module):
    """Flatten + linear on 3×8×8 inputs: deterministic, cheap for AutoAttack."""

    def __init__(self, num_classes: int = 10, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 8 * 8, num_classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class DropoutNet(LinearNet):
    def __init__(self, always_random: bool = False) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.always_random = always_random

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(x, 0.5, training=True) if self.always_random else self.drop(x)
        return super().forward(hidden)


class BatchStatsNet(LinearNet):
    """Normalises with the statistics of the batch even in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x - x.mean(dim=0))


def _images(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- preflight
def test_preflight_refuses_dropout_in_train_mode():
    model = DropoutNet().requires_grad_(False).train()
    with pytest.raises(ConfigError, match="training mode"):
        preflight(model, _images(), 10)
    preflight(prepare_for_evaluation(model), _images(), 10)  # we put it in eval mode ourselves


def test_preflight_refuses_a_randomised_forward_even_in_eval_mode():
    model = prepare_for_evaluation(DropoutNet(always_random=True))
    with pytest.raises(ConfigError, match="randomised"):
        preflight(model, _images(), 10)


def test_preflight_refuses_batch_dependent_outputs():
    with pytest.raises(ConfigError, match="batch size 1"):
        preflight(prepare_for_evaluation(BatchStatsNet()), _images(), 10)


def test_preflight_refuses_inputs_outside_unit_range():
    x = (_images() - 0.5) / 0.25  # a normalising loader
    with pytest.raises(ConfigError, match="normalize=false"):
        preflight(prepare_for_evaluation(LinearNet()), x, 10)


def test_unfrozen_parameters_are_refused_and_frozen_by_prepare():
    model = LinearNet().eval()
    with pytest.raises(ConfigError, match="require grad"):
        preflight(model, _images(), 10)
    prepare_for_evaluation(model)
    assert not any(p.requires_grad for p in model.parameters())
    assert preflight(model, _images(), 10)["repeat_max_diff"] == 0.0


def test_preflight_refuses_wrong_logit_shape():
    with pytest.raises(ConfigError, match=r"expected logits of shape \[32, 100\]"):
        preflight(prepare_for_evaluation(LinearNet()), _images(), 100)


def test_normalized_model_normalises_and_adds_no_state():
    inner = LinearNet()
    wrapped = NormalizedModel(inner, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in inner.state_dict()}
    x = _images(4)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapped(x), inner((x - mean) / std))


# ----------------------------------------------------------------------------------- checkpoints
def _resnet8_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("resnet8", 10).state_dict()


def _ours(state, normalization=None) -> dict:
    return {
        "format": "ikl-checkpoint",
        "model": state,
        "model_name": "resnet8",
        "num_classes": 10,
        "input_normalization": normalization,
    }


def _same_weights(model: nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("layout", ["module_prefix", "state_dict_key", "ours"])
def test_checkpoint_layouts_load(tmp_path, layout):
    state = _resnet8_state()
    if layout == "module_prefix":  # official DKL/TRADES/AWP (DataParallel), with TRADES' unused sub_block1
        obj = {f"module.{k}": v for k, v in state.items()} | {"module.sub_block1.layer.0.conv1.weight": torch.ones(1)}
    elif layout == "state_dict_key":  # RobustBench style
        obj = {"state_dict": state}
    else:
        obj = _ours(state)
    torch.save(obj, tmp_path / "weights.pt")
    model_name = None if layout == "ours" else "resnet8"
    model, source = load_eval_model(tmp_path / "weights.pt", model_name=model_name, num_classes=10)
    assert _same_weights(model, state) and source.model_name == "resnet8" and len(source.sha256) == 64


def test_foreign_checkpoint_without_model_name_is_refused(tmp_path):
    torch.save(_resnet8_state(), tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="pass model="):
        load_eval_model(tmp_path / "bare.pt", num_classes=10)


def test_conflicting_classes_and_wrong_architecture_are_refused(tmp_path):
    torch.save(_ours(_resnet8_state()), tmp_path / "ours.pt")
    with pytest.raises(ConfigError, match="conflicting numbers of classes"):
        load_eval_model(tmp_path / "ours.pt", num_classes=100)
    torch.save(_resnet8_state(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_eval_model(tmp_path / "bare.pt", model_name="resnet14", num_classes=10)


def _run_dir(tmp_path: Path, normalization=None) -> tuple[Path, dict, dict]:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    config = {"student": {"name": "resnet8"}, "dataset": {"name": "digits", "num_classes": 10}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    last, ema = _resnet8_state(0), _resnet8_state(1)
    save_checkpoint(_ours(last, normalization), run / "checkpoints" / "last.pt")
    save_checkpoint(_ours(ema, normalization), run / "checkpoints" / "ema_epoch.pt")
    return run, last, ema


def test_run_directory_picks_ema_then_named_weights(tmp_path):
    run, last, ema = _run_dir(tmp_path)
    model, source = load_eval_model(run, dataset="digits", num_classes=10)
    assert _same_weights(model, ema) and source.run_dir == run and source.file.name == "ema_epoch.pt"
    model, _ = load_eval_model(run, weights="last", num_classes=10)
    assert _same_weights(model, last)
    with pytest.raises(CheckpointError, match="no checkpoints/best.pt"):
        load_eval_model(run, weights="best")
    with pytest.raises(
        ConfigError, match="conflicting numbers of classes: the dataset says 100, the checkpoint says 10"
    ):
        load_eval_model(run, num_classes=100)


def test_missing_and_damaged_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_eval_model(tmp_path / "nope.pt", model_name="resnet8", num_classes=10)
    (tmp_path / "bad.pt").write_bytes(b"<html>not found</html>")
    with pytest.raises(CheckpointError, match="HTML"):
        load_eval_model(tmp_path / "bad.pt", model_name="resnet8", num_classes=10)


# ------------------------------------------------------------------------------------ AutoAttack
def _aa_problem(n: int = 24) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A linear model on which about half the points survive ε = 8/255; 4 are misclassified."""
    model = prepare_for_evaluation(LinearNet(scale=0.6))
    x = _images(n)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return model, x, y


class FastAutoAttack(AutoAttack):
    """AutoAttack with 10 APGD iterations and one restart: the same code paths, 10-50x cheaper."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for apgd in (self.apgd, self.apgd_targeted):
            apgd.n_iter, apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = 10, 2, 1, 1
        self.apgd.n_restarts = 1


@pytest.fixture
def fast_aa(monkeypatch):
    monkeypatch.setattr(aa_module, "AutoAttack", FastAutoAttack)


def _count_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = aa_module.run_attack_chunk

    def counting(adversary, attack, x, y, batch_size):
        calls.append(attack)
        return original(adversary, attack, x, y, batch_size)

    monkeypatch.setattr(aa_module, "run_attack_chunk", counting)
    return calls


def test_custom_autoattack_run_is_verified_and_labelled(tmp_path):
    model, x, y = _aa_problem()
    result = run_autoattack(
        model,
        x,
        y,
        eps=EPS,
        version="custom",
        attacks=["apgd-ce"],
        batch_size=8,
        state_path=tmp_path / "s.pt",
        log_path=tmp_path / "aa.log",
    )
    assert result["clean_acc"] == pytest.approx(20 / 24)
    assert 0 < result["robust_acc"] < result["clean_acc"]
    assert list(result["robust_acc_by_stage"]) == ["clean", "apgd-ce"]
    assert result["comparable_to_leaderboard"] is False and "not comparable to the leaderboard" in result["note"]
    check = result["verification"]
    assert check["passed"] and check["agrees"] and check["max_perturbation"] <= EPS + 1e-6
    assert check["robust_acc_recomputed"] == result["robust_acc"]
    assert (result["x_adv"] - x).abs().max() <= EPS + 1e-6
    assert "apgd-ce" in (tmp_path / "aa.log").read_text()


def test_verification_flags_bad_examples_and_disagreements():
    model, x, y = _aa_problem(8)
    robust = model(x).argmax(1) == y
    good = verify_adversarial(model, x, y, x.clone(), robust, eps=EPS)
    assert good["passed"] and good["robust_acc_recomputed"] == good["robust_acc_reported"] == 0.5
    too_far = verify_adversarial(model, x, y, (x + 2 * EPS).clamp(0, 1), robust, eps=EPS)
    assert not too_far["within_eps"] and not too_far["passed"]
    lying = verify_adversarial(model, x, y, x.clone(), torch.zeros_like(robust), eps=EPS)
    assert lying["n_disagree"] == 4 and not lying["agrees"] and not lying["passed"]
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert verify_adversarial(model, x, y, nan, robust, eps=EPS)["nan_count"] == 1


def test_chunked_run_matches_a_single_pyautoattack_run(fast_aa):
    model, x, y = _aa_problem(16)
    attacks = ["apgd-ce", "apgd-t"]
    ours = run_autoattack(model, x, y, eps=EPS, version="custom", attacks=attacks, batch_size=4, save_every=1)
    reference = FastAutoAttack(model, attacks=attacks, version="custom", eps=EPS, seed=0)
    _, y_adv = reference.run_standard_evaluation(x, y, batch_size=4)
    assert torch.equal(ours["robust_mask"], y_adv == y)


def test_finished_state_skips_every_attack(tmp_path, monkeypatch, fast_aa):
    model, x, y = _aa_problem()
    kwargs = {"eps": EPS, "version": "custom", "attacks": ["apgd-ce", "apgd-dlr"], "batch_size": 8}
    first = run_autoattack(model, x, y, state_path=tmp_path / "s.pt", **kwargs)
    calls = _count_calls(monkeypatch)
    second = run_autoattack(model, x, y, state_path=tmp_path / "s.pt", **kwargs)
    assert calls == []
    assert second["resumed_attacks"] == ["apgd-ce", "apgd-dlr"]
    assert second["robust_acc"] == first["robust_acc"] and second["verification"]["passed"]
    assert torch.equal(second["x_adv"], first["x_adv"])


def test_killed_run_resumes_without_redoing_finished_work(tmp_path, monkeypatch, fast_aa):
    model, x, y = _aa_problem()
    kwargs = {"eps": EPS, "version": "custom", "attacks": ["apgd-ce", "apgd-dlr"], "batch_size": 4, "save_every": 1}
    reference = run_autoattack(model, x, y, **kwargs)
    original = aa_module.run_attack_chunk
    seen: list[str] = []

    def dies_in_dlr(adversary, attack, x_chunk, y_chunk, batch_size):
        seen.append(attack)
        if attack == "apgd-dlr" and seen.count("apgd-dlr") == 2:
            raise KeyboardInterrupt  # killed during the second chunk of the second attack
        return original(adversary, attack, x_chunk, y_chunk, batch_size)

    monkeypatch.setattr(aa_module, "run_attack_chunk", dies_in_dlr)
    with pytest.raises(KeyboardInterrupt):
        run_autoattack(model, x, y, state_path=tmp_path / "s.pt", **kwargs)
    calls = _count_calls(monkeypatch)
    resumed = run_autoattack(model, x, y, state_path=tmp_path / "s.pt", **kwargs)
    assert "apgd-ce" not in calls and resumed["resumed_attacks"] == ["apgd-ce"]
    n_dlr_chunks = -(-round(reference["robust_acc_by_stage"]["apgd-ce"] * len(y)) // 4)
    assert len(calls) == n_dlr_chunks - 1  # the first apgd-dlr chunk was saved before the kill
    assert torch.equal(resumed["robust_mask"], reference["robust_mask"])
    assert resumed["robust_acc_by_stage"] == reference["robust_acc_by_stage"]


def test_state_from_another_evaluation_is_refused(tmp_path, fast_aa):
    model, x, y = _aa_problem(8)
    run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], state_path=tmp_path / "s.pt")
    with pytest.raises(ConfigError, match="belongs to another evaluation"):
        run_autoattack(model, x, y, eps=4 / 255, version="custom", attacks=["apgd-ce"], state_path=tmp_path / "s.pt")


def test_attack_settings_are_checked():
    model, x, y = _aa_problem(4)
    with pytest.raises(ConfigError, match="version=custom needs attacks"):
        run_autoattack(model, x, y, eps=EPS, version="custom")
    with pytest.raises(ConfigError, match="only used with version=custom"):
        run_autoattack(model, x, y, eps=EPS, attacks=["apgd-ce"])
    with pytest.raises(ConfigError, match="unknown attack"):
        run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["pgd"])


# -------------------------------------------------------------------------------- whole pipeline
def _labelled_test_set(run: Path, n: int = 16) -> TensorDataset:
    """Random 32×32 images labelled so that the run's ema weights get exactly 3 right."""
    model, _ = load_eval_model(run, num_classes=10)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    wrapped = NormalizedModel(model, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        y = wrapped(x).argmax(1)
    y[3:] = (y[3:] + 1) % 10
    return TensorDataset(x, y)


def test_evaluate_writes_complete_json_from_a_run_dir(tmp_path, fast_aa):
    run, _, _ = _run_dir(tmp_path, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    spec = EvalSpec(
        checkpoint=str(run),
        dataset="digits",
        num_classes=10,
        n_ex=12,
        batch_size=8,
        version="custom",
        attacks=["apgd-ce"],
        evaluations=["autoattack", "pgd5", "cw5"],
        results_dir=str(tmp_path / "results"),
        logger_mode="disabled",
    )
    result = evaluate(spec, _labelled_test_set(run))
    out = run / "eval_autoattack" / "ema_epoch_digits_custom-apgd-ce_Linf_eps8-255_n12_seed0"
    assert result["output_dir"] == str(out)
    written = json.loads((out / "result.json").read_text())
    assert set(written) >= RESULT_FIELDS
    assert written["eps"] == "8/255" and written["eps_float"] == 8 / 255 and written["n_ex"] == 12
    assert written["clean_acc"] == pytest.approx(3 / 12)  # NormalizedModel was applied
    assert written["verification_passed"] is True and written["comparable_to_leaderboard"] is False
    assert written["input_normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert set(written["evaluations"]) >= {"autoattack", "pgd5", "cw5"}
    assert written["worst_case_robust_acc"] <= min(written["robust_acc"], written["evaluations"]["pgd5"]["robust_acc"])
    copies = list((tmp_path / "results").glob("*.json"))
    assert len(copies) == 1 and json.loads(copies[0].read_text())["checkpoint_sha256"] == written["checkpoint_sha256"]
    assert (out / "aa_state.pt").is_file() and (out / "eval.log").is_file()


def test_config_composes_and_refuses_bad_eps_before_loading(tmp_path):
    overrides = [f"checkpoint={tmp_path / 'weights.pt'}", "dataset=digits", "model=wrn_34_10"]
    (tmp_path / "weights.pt").write_bytes(b"")  # never opened: the data set is given, the model is given
    cfg = compose_config("eval_autoattack", overrides)
    assert cfg.eps == "8/255" and cfg.model.name == "wrn_34_10" and cfg.evaluations == ["autoattack"]
    spec, section = eval_autoattack.spec_from_config(cfg, overrides)
    assert spec.model == "wrn_34_10" and spec.num_classes == 10 and section["name"] == "digits"
    assert spec.provenance == {"dataset": "dataset="} and spec.results_dir == "outputs/eval_autoattack/results"
    with pytest.raises(ConfigError, match="is not 8/255"):
        eval_autoattack.run(compose_config("eval_autoattack", ["checkpoint=/nonexistent.pt", "eps=0.031"]))
    with pytest.raises(ConfigError, match="checkpoint is required"):
        eval_autoattack.run(compose_config("eval_autoattack", []))


@pytest.mark.slow
def test_entry_point_writes_json_and_exits_zero(tmp_path):
    save_checkpoint(_ours(_resnet8_state()), tmp_path / "tiny.pt")
    overrides = [
        f"checkpoint={tmp_path / 'tiny.pt'}",
        "dataset=digits",
        "n_ex=8",
        "batch_size=8",
        "version=custom",
        "attacks=[apgd-ce]",
        f"output_dir={tmp_path / 'out'}",
        f"results_dir={tmp_path / 'results'}",
        "logger.mode=disabled",
        "device=cpu",
    ]
    proc = run_entry("eval_autoattack.py", overrides, env={"OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads((tmp_path / "out" / "result.json").read_text())
    assert set(written) >= RESULT_FIELDS and written["dataset"] == "digits" and written["n_ex"] == 8
    assert written["verification_passed"] is True
    assert len(list((tmp_path / "results").glob("*.json"))) == 1


@pytest.mark.slow
def test_entry_point_bad_checkpoint_exits_2_with_one_line(tmp_path):
    proc = run_entry(
        "eval_autoattack.py", [f"checkpoint={tmp_path / 'missing.pt'}", "dataset=digits", "logger.mode=disabled"]
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the real command line (in-process)
def labelled_datasets(*, checkpoint: str, n: int = 16, wrong: int = 4, max_test_samples=None, **_: object):
    """A dataset builder for run configs: random 32x32 images that the resnet8 in ``checkpoint`` gets right
    except the first ``wrong`` (so AutoAttack has points to attack). Same contract as ikl.data builders."""
    from types import SimpleNamespace

    model, _ = load_eval_model(checkpoint, num_classes=10)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    y[:wrong] = (y[:wrong] + 1) % 10
    if max_test_samples is not None:
        x, y = x[:max_test_samples], y[:max_test_samples]
    return SimpleNamespace(test=TensorDataset(x, y))


def _cli_run_dir(tmp_path: Path, *, dataset_name: str = "labelled", builder: dict | None = None, model="resnet8"):
    """A run directory as train_at.py writes it: config.yaml with a full dataset section, our last.pt."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    state = create_model(model, 10).state_dict()
    weights = run / "checkpoints" / "last.pt"
    meta = {"format": "ikl-checkpoint", "model_name": model, "num_classes": 10, "input_normalization": None}
    save_checkpoint({**meta, "model": state}, weights)
    builder = builder or {"_target_": "tests.test_eval_autoattack.labelled_datasets", "checkpoint": str(weights)}
    config = {"model": {"name": model}, "dataset": {"name": dataset_name, "num_classes": 10, "builder": builder}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


QUICK = ["n_ex=16", "batch_size=8", "version=custom", "attacks=[apgd-ce]", "logger.mode=disabled", "device=cpu"]


def _one_line(code: int, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, (code, stderr[-2000:])
    return lines[0]


def test_run_dir_gives_the_data_set_and_model(tmp_path, fast_aa):
    """No dataset=/model= on the command line: both come from the run's config.yaml (the eval config's
    default dataset=cifar10 used to win and was refused as a conflict)."""
    run = _cli_run_dir(tmp_path)
    code, stderr = cli("eval_autoattack.py", [f"checkpoint={run}", *QUICK, f"results_dir={tmp_path / 'res'}"])
    assert code == 0, stderr[-3000:]
    (out,) = (run / "eval_autoattack").iterdir()
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "labelled" and result["model"] == "resnet8" and result["n_ex"] == 16
    assert result["provenance"] == {"dataset": "the run config", "model": "the checkpoint"}
    assert result["clean_acc"] == 12 / 16 and result["overrides_stated"] == []
    assert result["config"]["dataset"]["builder"]["_target_"] == "tests.test_eval_autoattack.labelled_datasets"


def test_explicit_choices_win_and_are_stated(tmp_path, fast_aa):
    """dataset=/model= given although the run says otherwise: used, and said in the log and the JSON."""
    run = _cli_run_dir(tmp_path, dataset_name="digits_v1", model="resnet18")
    args = [f"checkpoint={run}", "dataset=digits", "model=ResNet18", "n_ex=4", "batch_size=4", "evaluations=[pgd1]"]
    code, stderr = cli("eval_autoattack.py", [*args, "logger.mode=disabled", "device=cpu", "results_dir=null"])
    assert code == 0, stderr[-3000:]
    (out,) = (run / "eval_autoattack").iterdir()
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "digits" and result["model"] == "ResNet18"  # same keys as resnet18: it loads
    assert result["provenance"] == {"dataset": "dataset=", "model": "model="}
    stated = result["overrides_stated"]
    assert "dataset=digits was given although the run config says digits_v1" in stated
    assert "model=ResNet18 was given although the checkpoint says resnet18" in stated
    log_text = (out / "eval.log").read_text()
    assert all(f"stated: {note}" in log_text for note in stated)


def test_dataset_values_given_apply_on_top_of_the_run_data_set(tmp_path, fast_aa):
    run = _cli_run_dir(tmp_path)
    args = [f"checkpoint={run}", "+dataset.builder.wrong=8", *QUICK, "results_dir=null"]
    code, stderr = cli("eval_autoattack.py", args)
    assert code == 0, stderr[-3000:]
    (out,) = (run / "eval_autoattack").iterdir()
    assert json.loads((out / "result.json").read_text())["clean_acc"] == 8 / 16


def _fake_standard_autoattack(model, x, y, **kwargs):
    """What run_autoattack returns for version=standard (comparable by itself), without the attacks."""
    robust = predict(model, x, batch_size=len(x), device="cpu") == y
    verification = {"passed": True}
    stages = {"clean": fraction(robust), **dict.fromkeys(["apgd-ce", "apgd-t", "fab-t", "square"], fraction(robust))}
    return {
        "robust_acc": fraction(robust),
        "robust_acc_by_stage": stages,
        "attacks": list(stages)[1:],
        "comparable_to_leaderboard": True,
        "note": None,
        "verification": verification,
        "x_adv": x.clone(),
        "robust_mask": robust,
    }


@pytest.mark.parametrize(("subset", "comparable"), [(None, True), (16, False)])
def test_a_cut_down_test_set_is_not_leaderboard_comparable(tmp_path, monkeypatch, subset, comparable):
    """dataset.builder.max_test_samples=16 with n_ex=10000: all 16 examples of the cut-down set are
    evaluated, which used to count as the full split (n_ex was compared with the subsetted set)."""
    monkeypatch.setattr(runner_module, "run_autoattack", _fake_standard_autoattack)
    run = _cli_run_dir(tmp_path)
    extra = [] if subset is None else [f"dataset.builder.max_test_samples={subset}"]
    code, stderr = cli("eval_autoattack.py", [f"checkpoint={run}", "logger.mode=disabled", "results_dir=null", *extra])
    assert code == 0, stderr[-3000:]
    (out,) = (run / "eval_autoattack").iterdir()
    result = json.loads((out / "result.json").read_text())
    assert result["version"] == "standard" and result["n_ex"] == 16
    assert result["comparable_to_leaderboard"] is comparable
    if not comparable:
        assert "dataset.builder.max_test_samples=16: the test set itself is a subset" in result["note"]


def test_log_counts_are_over_all_examples(tmp_path, caplog, fast_aa):
    """Every accuracy in eval.log is k/N over the N evaluated examples and equals the JSON; pyautoattack's
    per-chunk lines ("initial accuracy: 100.00%", re-based on the still-robust points) never appear."""
    run = _cli_run_dir(tmp_path)
    args = [f"checkpoint={run}", *QUICK[1:], "n_ex=16", "save_every=1", "results_dir=null"]
    code, stderr = cli("eval_autoattack.py", [*args, "version=custom", "attacks=[apgd-ce,apgd-t]"])
    assert code == 0, stderr[-3000:]
    (out,) = (run / "eval_autoattack").iterdir()
    result = json.loads((out / "result.json").read_text())
    lines = [line for line in (out / "eval.log").read_text().splitlines() if "accuracy" in line]
    assert not [line for line in lines if "auto-attack" in line.split(" INFO ")[0] or "initial accuracy" in line]
    shares = {}
    for line in lines:
        match = re.search(r"(clean accuracy|after [A-Z-]+|robust accuracy) ?:? ([\d.]+)% \((\d+)/(\d+)\)", line)
        assert match, f"an accuracy without its count over all examples: {line}"
        assert int(match.group(4)) == 16 and float(match.group(2)) == pytest.approx(100 * int(match.group(3)) / 16)
        shares[match.group(1)] = int(match.group(3)) / 16
    assert shares["clean accuracy"] == result["clean_acc"] == 12 / 16
    assert shares["after APGD-T"] == result["robust_acc"] and shares["after APGD-CE"] >= result["robust_acc"]
    model, x, y = _aa_problem()
    with caplog.at_level(logging.DEBUG):
        run_autoattack(model, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=8)
    assert not [r for r in caplog.records if r.name == "auto-attack" and r.levelno < logging.WARNING]


def test_default_outputs_land_in_ignored_paths():
    """results_dir's default is a runtime folder that git ignores, never the tracked results/."""
    cfg = compose_config("eval_autoattack", ["checkpoint=x.pt"])
    assert EvalSpec(checkpoint="x", dataset="d", num_classes=1).results_dir == cfg.results_dir
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    written = [f"{cfg.results_dir}/model.json", "outputs/eval_autoattack/model-12345678/tag/result.json"]
    written.append(f"{cfg.robustbench.dir}/cifar100/Linf/Cui2023Decoupled_WRN-34-10.pt")  # RobustBench's cache
    for path in written:
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], check=False)
        assert ignored.returncode == 0, f"{path} would be tracked"
    assert not str(cfg.results_dir).startswith("results")


# --------------------------------------------------------------------- bad values: one line, exit 2
BAD_VALUES = [
    ("batch_size=0", "batch_size=0 must be a positive whole number"),
    ("batch_size=2.5", "batch_size=2.5 must be a positive whole number (not a fraction)"),
    ("batch_size=abc", "batch_size='abc' must be a positive whole number"),
    ("batch_size=true", "batch_size=true must be a positive whole number"),
    ("batch_size=null", "batch_size=null: a value is required, e.g. batch_size=200"),
    ("seed=abc", "seed='abc' must be a whole number >= 0"),
    ("seed=1.5", "seed=1.5 must be a whole number >= 0 (not a fraction)"),
    ("seed=-1", "seed=-1 must be a whole number >= 0"),
    ("seed=null", "seed=null: a value is required, e.g. seed=0"),
    ("save_every=0", "save_every=0 must be a positive whole number"),
    ("n_ex=-1", "n_ex=-1 must be positive"),
    ("n_ex=0", "n_ex=0 must be positive"),
    ("n_ex=1e3.5", "n_ex='1e3.5' must be a positive whole number"),
    ("n_ex=null", "n_ex=null: a value is required, e.g. n_ex=10000"),
    ("eps=null", "eps=null: a value is required, e.g. eps=8/255"),
    ("norm=null", "norm=null: a value is required, e.g. norm=Linf"),
    ("version=null", "version=null: a value is required, e.g. version=standard"),
    ("evaluations=null", "evaluations=null: a value is required, e.g. evaluations=[autoattack]"),
    ("evaluations=[]", "evaluations is empty"),
    ("device=null", "device=null: a value is required, e.g. device=auto"),
    ("device=gpu", "device='gpu' is not a device"),
    ("checkpoint=null", "checkpoint is required"),
    ("allow_inexact_eps=maybe", "allow_inexact_eps='maybe' must be true or false"),
    ("name=a/b", "name='a/b' is a file name, not a path"),
    ("logger.mode=loud", "logger.mode='loud' is not one of offline, online, disabled"),
    ("input_normalization=imagenet", "input_normalization='imagenet' is not auto, none or"),
    ("version=custom attacks=apgd-ce", "attacks='apgd-ce' must be a list of names, e.g. attacks=[apgd-ce,apgd-t]"),
]
if not torch.cuda.is_available():
    BAD_VALUES.append(("device=cuda", "device=cuda but no CUDA device is visible"))


@pytest.mark.parametrize(("override", "expected"), BAD_VALUES, ids=[case for case, _ in BAD_VALUES])
def test_bad_values_are_one_line_before_anything_is_loaded(tmp_path, override, expected):
    """The checkpoint does not exist and the data set is not there: the value is named first."""
    args = [f"checkpoint={tmp_path / 'never-opened.pt'}", "dataset=cifar100", f"dataset.builder.root={tmp_path}"]
    args += [f"output_dir={tmp_path / 'out'}", "logger.mode=disabled", *override.split()]
    line = _one_line(*cli("eval_autoattack.py", args))
    assert line == f"eval_autoattack: {line.split(': ', 1)[1]}" and expected in line, line
    assert not (tmp_path / "out").exists()


def _zero_byte(tmp_path: Path) -> Path:
    (tmp_path / "empty.pt").write_bytes(b"")
    return tmp_path / "empty.pt"


def _plain_dir(tmp_path: Path) -> Path:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pt").write_bytes(b"x")
    return tmp_path / "weights"


def _run_dir_without_weights(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {name: resnet8}\n")
    return tmp_path / "run"


BAD_CHECKPOINTS = {
    "zero-byte file": (_zero_byte, "is empty (0 bytes: an interrupted download or copy?); re-download or re-create it"),
    "directory, not a run dir": (
        _plain_dir,
        "is a directory but not a run directory (a run directory holds config.yaml and checkpoints/<name>.pt)",
    ),
    "run dir without checkpoints": (_run_dir_without_weights, "no checkpoints/ema_epoch or last.pt in run directory"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoints_are_one_line(tmp_path, case):
    make, expected = BAD_CHECKPOINTS[case]
    args = [f"checkpoint={make(tmp_path)}", "dataset=digits", "model=resnet8", f"output_dir={tmp_path / 'out'}"]
    line = _one_line(*cli("eval_autoattack.py", [*args, "logger.mode=disabled"]))
    assert expected in line, line
    assert not (tmp_path / "out").exists()


def test_a_state_dict_that_fits_another_model_says_which(tmp_path):
    torch.save(_resnet8_state(), tmp_path / "bare.pt")
    args = [f"checkpoint={tmp_path / 'bare.pt'}", "dataset=digits", "model=resnet14", "logger.mode=disabled"]
    line = _one_line(*cli("eval_autoattack.py", args))
    assert "does not fit model=resnet14 (10 classes)" in line and "look most like model=resnet8" in line, line


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"mean": [0.5] * 3, "std": [0.25] * 3}),
        ("none", None),
        ({"mean": [0.0] * 3, "std": [2.0] * 3}, {"mean": [0.0] * 3, "std": [2.0] * 3}),
    ],
)
def test_input_normalization_can_be_overridden(tmp_path, monkeypatch, choice, expected):
    """auto: the checkpoint's own; none: the model sees [0, 1] inputs; {mean, std}: that one."""
    run, _, _ = _run_dir(tmp_path, normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    spec = EvalSpec(
        checkpoint=str(run),
        dataset="digits",
        num_classes=10,
        n_ex=4,
        batch_size=4,
        evaluations=["pgd1"],
        input_normalization=choice,
        output_dir=str(tmp_path / "out"),
        results_dir=None,
        logger_mode="disabled",
    )
    seen = []
    original = runner_module.NormalizedModel

    def spy(model, mean, std):
        seen.append({"mean": list(mean), "std": list(std)})
        return original(model, mean, std)

    monkeypatch.setattr(runner_module, "NormalizedModel", spy)
    result = evaluate(spec, _labelled_test_set(run, n=4))
    assert result["input_normalization"] == expected and seen == ([expected] if expected else [])
