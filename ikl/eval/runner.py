"""One robustness evaluation of one checkpoint: load, pre-flight, attack, re-verify, write JSON.

``evaluate(spec, test_set)`` takes plain arguments (an :class:`EvalSpec` and a dataset yielding
(image in [0, 1], label)); the Hydra entry point ``eval_autoattack.py`` only builds them.

Evaluations (``spec.evaluations``): ``autoattack`` (:func:`ikl.eval.autoattack.run_autoattack`) and
``pgd<K>`` / ``cw<K>`` (L∞ PGD with cross-entropy / CW margin, K steps, step ε/4 = 2/255 at
ε = 8/255, uniform random start; paper Table 11 uses K = 10 and 20). ``worst_case_robust_acc`` is
the fraction of samples that survive every evaluation run.

Output directory (``spec.output_dir``; default below) holds ``result.json``, ``eval.log`` and the
AutoAttack state ``aa_state.pt``. The default is deterministic, so rerunning the same command after
a kill resumes: ``<run dir>/eval_autoattack/<tag>`` for a checkpoint inside one of our run
directories, else ``outputs/eval_autoattack/<file stem>-<sha8>/<tag>``, where ``<tag>`` names the
weights, dataset, version, norm, ε, n_ex and seed. ``result.json`` is also copied to
``<results_dir>/<name>.json`` (default ``outputs/eval_autoattack/results``: runtime outputs never go
into the tracked ``results/``).

Leaderboard comparability (``comparable_to_leaderboard``): AutoAttack ``standard`` on the whole test
split, i.e. ``n_ex`` covers the test set *and* the test set itself was not cut down
(``dataset.builder.max_test_samples``); for a ``robustbench:<id>`` target also its threat model and ε.
Then the result holds ``leaderboard``: our numbers beside the published ones
(:func:`ikl.eval.robustbench.compare_with_leaderboard`).

The log (console and ``eval.log``) gives every accuracy as a count over all evaluated examples
(``robust accuracy after APGD-T: 31.91% (3191/10000)``). pyautoattack's own lines are left out: we
call it once per chunk of still-robust points, so its "initial accuracy: 100.00%" and per-attack
accuracies are re-based on that chunk; only its warnings (its model checks) come through, once each.
"""

from __future__ import annotations

import logging
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyautoattack
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ikl.attacks import pgd_correct
from ikl.engine.sink import write_json_atomic
from ikl.errors import ConfigError
from ikl.eval import robustbench
from ikl.eval.autoattack import (
    LEADERBOARD_NOTE,
    check_attack_config,
    count,
    fraction,
    log_to_file,
    predict,
    run_autoattack,
)
from ikl.eval.checkpoints import ModelSource, load_eval_model, locate
from ikl.eval.eps import check_eps, format_eps, parse_eps
from ikl.eval.options import check_device, check_options
from ikl.eval.preflight import NormalizedModel, preflight, prepare_for_evaluation

log = logging.getLogger(__name__)

PGD_PATTERN = re.compile(r"^(pgd|cw)(\d+)$")
STATE_FILE = "aa_state.pt"
RESULT_FILE = "result.json"
LOG_FILE = "eval.log"


@dataclass
class EvalSpec:
    """Everything an evaluation needs besides the data (mirrors ``configs/eval_autoattack.yaml``)."""

    checkpoint: str
    dataset: str
    num_classes: int
    weights: str | None = None
    model: str | None = None
    eps: str | float = "8/255"
    allow_inexact_eps: bool = False
    norm: str = "Linf"
    version: str = "standard"
    attacks: list[str] | None = None
    n_ex: int = 10000
    batch_size: int = 200
    seed: int = 0
    device: str = "auto"
    evaluations: list[str] = field(default_factory=lambda: ["autoattack"])
    output_dir: str | None = None
    results_dir: str | None = "outputs/eval_autoattack/results"
    name: str | None = None
    save_every: int = 5
    logger_mode: str = "offline"
    logger_project: str = "ikl-eval"
    max_test_samples: int | None = None  # dataset.builder.max_test_samples: the test set was cut down
    input_normalization: str | dict[str, list[float]] = "auto"  # auto | none | {"mean": [...], "std": [...]}
    robustbench_dir: str = robustbench.DEFAULT_DIR
    robustbench_file: str | None = None
    # where the data set and model came from, and every explicit choice that overrode the run/checkpoint
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def check_spec(spec: EvalSpec) -> EvalSpec:
    """``spec`` with every value checked (one ``ConfigError`` line) and whole numbers as ``int``."""
    values = check_options(asdict(spec))
    check_eps(values["eps"], allow_inexact=spec.allow_inexact_eps)
    check_attack_config(values["version"], values["attacks"], values["norm"])
    check_evaluations(values["evaluations"], values["norm"])
    norm = spec.input_normalization
    if not (norm in ("auto", "none") or (isinstance(norm, dict) and set(norm) == {"mean", "std"})):
        raise ConfigError(
            f"input_normalization={norm!r} is not auto, none or {{mean: [...], std: [...]}}; "
            "e.g. input_normalization=none for a model that takes [0, 1] inputs"
        )
    return EvalSpec(**values)


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a device that is not there is one ``ConfigError`` line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


def check_evaluations(evaluations: Sequence[str], norm: str) -> None:
    """Refuse unknown evaluation names, and PGD/CW for a norm other than L∞."""
    if not evaluations:
        raise ConfigError("evaluations is empty; use e.g. evaluations=[autoattack,pgd20,cw20]")
    for name in evaluations:
        if name != "autoattack" and not PGD_PATTERN.match(name):
            raise ConfigError(f"unknown evaluation {name!r}; use autoattack, pgd<K> or cw<K> (e.g. pgd20, cw20)")
        if name != "autoattack" and norm != "Linf":
            raise ConfigError(f"{name} is an L-inf attack but norm={norm}; drop it or use norm=Linf")


def take_examples(test_set: Dataset, n_ex: int, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """The first ``n_ex`` test examples in order (as the official AutoAttack script), as tensors."""
    if n_ex <= 0:
        raise ConfigError(f"n_ex={n_ex} must be positive")
    if n_ex > len(test_set):
        log.info("evaluating all %d test examples", len(test_set))
    xs, ys, seen = [], [], 0
    for x, y in DataLoader(test_set, batch_size=batch_size, shuffle=False):
        xs.append(x[: n_ex - seen])
        ys.append(torch.as_tensor(y)[: n_ex - seen])
        seen += len(xs[-1])
        if seen >= n_ex:
            break
    return torch.cat(xs).float(), torch.cat(ys).long()


def pgd_evaluation(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    name: str,
    eps: float,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[dict[str, Any], Tensor]:
    """PGD-K / CW-K (``name`` = ``pgd20`` …) with step ε/4; returns the summary and the robust mask."""
    kind, steps = PGD_PATTERN.match(name).groups()  # type: ignore[union-attr]
    generator = torch.Generator(device=device).manual_seed(seed)
    started, masks = time.perf_counter(), []
    for i in range(0, len(y), batch_size):
        _, robust = pgd_correct(
            model,
            x[i : i + batch_size].to(device),
            y[i : i + batch_size].to(device),
            eps=eps,
            steps=int(steps),
            step_size=eps / 4,
            objective="ce" if kind == "pgd" else "cw",
            random_start="uniform",
            generator=generator,
        )
        masks.append(robust.cpu())
    mask = torch.cat(masks)
    summary = {"robust_acc": fraction(mask), "steps": int(steps), "step_size": eps / 4}
    summary["seconds"] = time.perf_counter() - started
    log.info("%s robust accuracy: %s", name, count(mask))
    return summary, mask


def _eps_slug(eps: float) -> str:
    return format_eps(eps).replace("/", "-")


def eval_tag(spec: EvalSpec, source: ModelSource, eps: float, n_ex: int) -> str:
    """Directory/file-name tag of an evaluation: weights, dataset, attack set, norm, ε, n_ex, seed."""
    version = spec.version + ("-" + "+".join(spec.attacks) if spec.version == "custom" and spec.attacks else "")
    return f"{source.file.stem}_{spec.dataset}_{version}_{spec.norm}_eps{_eps_slug(eps)}_n{n_ex}_seed{spec.seed}"


def default_output_dir(source: ModelSource, tag: str) -> Path:
    """``<run dir>/eval_autoattack/<tag>`` or ``outputs/eval_autoattack/<stem>-<sha8>/<tag>``."""
    if source.run_dir is not None:
        return source.run_dir / "eval_autoattack" / tag
    return Path("outputs") / "eval_autoattack" / f"{source.file.stem}-{source.sha256[:8]}" / tag


def input_normalization(spec: EvalSpec, source: ModelSource) -> dict[str, list[float]] | None:
    """The normalisation to wrap the model in: ``spec.input_normalization`` unless ``auto``, else the source's."""
    if spec.input_normalization == "none":
        return None
    if isinstance(spec.input_normalization, dict):
        return {k: [float(v) for v in spec.input_normalization[k]] for k in ("mean", "std")}
    return source.input_normalization


def _prepare_model(model: nn.Module, norm: dict[str, list[float]] | None, device: torch.device) -> nn.Module:
    if norm:
        log.info("the model takes normalised inputs: wrapping it in NormalizedModel(mean=%s, std=%s)", *norm.values())
        model = NormalizedModel(model, norm["mean"], norm["std"])
    return prepare_for_evaluation(model).to(device)


def _leaderboard(
    spec: EvalSpec, aa: dict[str, Any] | None, n_ex: int, test_size: int, entry: robustbench.Entry | None
) -> tuple[bool, list[str]]:
    """Whether the AutoAttack number follows the leaderboard protocol, and every reason it does not."""
    notes = ["AutoAttack was not run"] if aa is None else [aa["note"]] if aa.get("note") else []
    if spec.max_test_samples is not None:
        notes.append(
            f"dataset.builder.max_test_samples={spec.max_test_samples}: the test set itself is a subset "
            f"({test_size} examples), {LEADERBOARD_NOTE}"
        )
    if n_ex < test_size:
        notes.append(f"n_ex={n_ex} of {test_size} test examples: a subset, {LEADERBOARD_NOTE}")
    if entry is not None:
        if spec.norm != entry.threat_model or parse_eps(spec.eps) != parse_eps(entry.eps):
            notes.append(
                f"norm={spec.norm} eps={spec.eps}: {entry.model_id} is on the {entry.threat_model} "
                f"eps={entry.eps} board, {LEADERBOARD_NOTE}"
            )
        if spec.dataset != entry.dataset:
            notes.append(
                f"dataset={spec.dataset}: {entry.model_id} is on the {entry.dataset} board, {LEADERBOARD_NOTE}"
            )
    comparable = aa is not None and bool(aa["comparable_to_leaderboard"]) and not notes
    return comparable, notes


def _run_evaluations(
    spec: EvalSpec, model: nn.Module, x: Tensor, y: Tensor, eps: float, out_dir: Path, source: ModelSource, device
) -> tuple[dict[str, Any], float]:
    """Every evaluation's summary by name, and the share of samples that survive all of them."""
    results: dict[str, Any] = {}
    masks = []
    for name in spec.evaluations:
        if name == "autoattack":
            aa = run_autoattack(
                model,
                x,
                y,
                eps=eps,
                norm=spec.norm,
                version=spec.version,
                attacks=spec.attacks,
                seed=spec.seed,
                batch_size=spec.batch_size,
                state_path=out_dir / STATE_FILE,
                device=device,
                log_path=None,
                model_id=source.sha256,
                save_every=spec.save_every,
            )
            aa.pop("x_adv")
            masks.append(aa.pop("robust_mask"))
            results["autoattack"] = aa
        else:
            results[name], mask = pgd_evaluation(
                model, x, y, name=name, eps=eps, batch_size=spec.batch_size, device=device, seed=spec.seed
            )
            masks.append(mask)
    return results, fraction(torch.stack(masks).all(dim=0))


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "pyautoattack": pyautoattack.__version__, "python": platform.python_version()}


def _describe(spec: EvalSpec, source: ModelSource, eps: float) -> dict[str, Any]:
    """The identity part of the result: what was evaluated, how, with which software."""
    return {
        "model": source.model_name,
        "dataset": spec.dataset,
        "num_classes": source.num_classes,
        "checkpoint": str(spec.checkpoint),
        "checkpoint_file": str(source.file),
        "checkpoint_sha256": source.sha256,
        "checkpoint_layout": source.layout,
        "input_normalization": input_normalization(spec, source),
        "provenance": {**spec.provenance, "model": source.model_from or "model="},
        "overrides_stated": [*spec.notes, *source.notes],
        "eps": spec.eps if isinstance(spec.eps, str) else format_eps(eps),
        "eps_float": eps,
        "norm": spec.norm,
        "version": spec.version,
        "seed": spec.seed,
        "batch_size": spec.batch_size,
        "versions": _versions(),
        "torch_version": torch.__version__,
        "pyautoattack_version": pyautoattack.__version__,
    }


def _summarize(
    spec: EvalSpec, results: dict[str, Any], worst: float, n_ex: int, test_size: int, entry: robustbench.Entry | None
) -> dict[str, Any]:
    """The numbers: clean/AA accuracy, stages, re-verification, leaderboard comparability."""
    aa = results.get("autoattack")
    comparable, notes = _leaderboard(spec, aa, n_ex, test_size, entry)
    if aa and not aa["verification"]["passed"]:
        notes.insert(0, "RE-VERIFICATION FAILED: the adversarial examples do not reproduce this robust accuracy")
    return {
        "n_ex": n_ex,
        "attacks": aa["attacks"] if aa else None,
        "comparable_to_leaderboard": comparable,
        "note": "; ".join(notes) or None,
        "robust_acc": aa["robust_acc"] if aa else None,
        "robust_acc_by_stage": aa["robust_acc_by_stage"] if aa else None,
        "verification": aa["verification"] if aa else None,
        "verification_passed": aa["verification"]["passed"] if aa else None,
        "worst_case_robust_acc": worst,
        "evaluations": results,
    }


def _log_wandb(spec: EvalSpec, result: dict[str, Any], out_dir: Path, name: str) -> None:
    """Best effort: a W&B run with the summary under ``aa/``, ``pgd20/``… keys; failures only warn."""
    if spec.logger_mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(
            project=spec.logger_project,
            name=name,
            dir=str(out_dir),
            mode=spec.logger_mode,
            config=asdict(spec),
            reinit="finish_previous",
        )
        try:
            run.summary.update(_metric_keys(result))
        finally:
            run.finish()
    except Exception as exc:  # noqa: BLE001 - logging must never lose a finished evaluation
        log.warning("W&B logging skipped (%s: %s); the results are in %s", type(exc).__name__, exc, out_dir)


def _metric_keys(result: dict[str, Any]) -> dict[str, float]:
    metrics = {"aa/clean_acc": result["clean_acc"], "eval/worst_case_robust_acc": result["worst_case_robust_acc"]}
    for name, value in result["evaluations"].items():
        if name == "autoattack":
            metrics["aa/robust_acc"] = value["robust_acc"]
            metrics.update({f"aa/robust_acc_{k}": v for k, v in value["robust_acc_by_stage"].items()})
        else:
            metrics[f"{name}/robust_acc"] = value["robust_acc"]
    return metrics


def _log_leaderboard(comparison: dict[str, Any], clean: float, robust: float | None) -> None:
    robust_text = "n/a" if robust is None else f"{100 * robust:.2f}%"
    line = (
        f"RobustBench {comparison['model_id']} ({comparison['dataset']}, {comparison['threat_model']}): "
        f"clean {100 * clean:.2f}% vs published {comparison['published_clean_acc_pct']:.2f}%, "
        f"AutoAttack {robust_text} vs published {comparison['published_autoattack_acc_pct']:.2f}%"
    )
    verdict = comparison["within_tolerance"]
    if verdict is None:
        log.info("%s; not compared: %s", line, comparison["not_compared_because"])
    elif verdict:
        log.info("%s: within tolerance (%s pp)", line, comparison["tolerance_pp"])
    else:
        log.warning("%s: OUTSIDE the tolerance (%s pp)", line, comparison["tolerance_pp"])


def evaluate(
    spec: EvalSpec, test_set: Dataset | Callable[[], Dataset], *, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``spec`` on ``test_set`` (inputs in [0, 1]); returns the result dict written to JSON.

    ``test_set`` may be a zero-argument factory, called only after every setting, ε, the attack
    settings and the checkpoint have passed their checks. ``config`` (the resolved config) is stored
    in the result.
    """
    started = time.perf_counter()
    spec = check_spec(spec)
    eps = check_eps(spec.eps, allow_inexact=spec.allow_inexact_eps)
    device = resolve_device(spec.device)
    located = locate(
        spec.checkpoint,
        weights=spec.weights,
        dataset=spec.dataset,
        robustbench_dir=spec.robustbench_dir,
        robustbench_file=spec.robustbench_file,
    )
    model, source = load_eval_model(located, model_name=spec.model, num_classes=spec.num_classes, dataset=spec.dataset)
    model = _prepare_model(model, input_normalization(spec, source), device)
    test_set = test_set() if callable(test_set) and not isinstance(test_set, Dataset) else test_set
    x, y = take_examples(test_set, spec.n_ex)
    report = preflight(model, x[: spec.batch_size].to(device), source.num_classes)
    tag = eval_tag(spec, source, eps, len(y))
    out_dir = Path(spec.output_dir) if spec.output_dir else default_output_dir(source, tag)
    name = spec.name or f"{source.model_name}_{source.run_dir.name if source.run_dir else source.sha256[:8]}_{tag}"
    with log_to_file(out_dir / LOG_FILE):
        log.info(
            "evaluating %s (%s) on %s: %d examples, output in %s",
            source.file,
            source.model_name,
            spec.dataset,
            len(y),
            out_dir,
        )
        for note in [*spec.notes, *source.notes]:
            log.warning("stated: %s", note)
        correct = predict(model, x, batch_size=spec.batch_size, device=device) == y
        clean = fraction(correct)
        if "autoattack" not in spec.evaluations:  # else AutoAttack logs the same line
            log.info("clean accuracy: %s", count(correct))
        results, worst = _run_evaluations(spec, model, x, y, eps, out_dir, source, device)
        summary = _summarize(spec, results, worst, len(y), len(test_set), source.robustbench)
        result = {**_describe(spec, source, eps), "clean_acc": clean, **summary}
        if source.robustbench is not None:
            result["leaderboard"] = robustbench.compare_with_leaderboard(
                source.robustbench,
                clean,
                result["robust_acc"],
                comparable=result["comparable_to_leaderboard"],
                why_not=result["note"],
            )
            _log_leaderboard(result["leaderboard"], clean, result["robust_acc"])
        result.update(name=name, output_dir=str(out_dir), device=str(device), preflight=report, config=config)
        result["seconds"] = time.perf_counter() - started
        write_json_atomic(out_dir / RESULT_FILE, result)
        if spec.results_dir:
            write_json_atomic(Path(spec.results_dir) / f"{name}.json", result)
        log.info("wrote %s", out_dir / RESULT_FILE)
    _log_wandb(spec, result, out_dir, name)
    return result
