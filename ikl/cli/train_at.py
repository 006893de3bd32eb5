"""Adversarial training (IKL-AT, TRADES, or plain CE): compose the config, build, hand to ikl.engine.

python train_at.py                                   # digits, IKL-AT, CPU, a few minutes
python train_at.py loss=trades dataset=cifar10 model=wrn_34_10
python train_at.py experiment=at_cifar100/ikl_at seed=0
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from ikl.cli import compose
from ikl.cli.models import build_model
from ikl.cli.overrides import check_command_line
from ikl.cli.paths import CONFIGS
from ikl.eval import check_eps
from ikl.tasks.at import AdversarialTask, AWPConfig, check_recipe

log = logging.getLogger("ikl.train_at")
MONITOR = {"best": "test/acc", "best_pgd": "test/pgd_acc"}


def build_task(cfg: DictConfig, model, num_classes: int, steps_per_epoch: int | None = None) -> AdversarialTask:
    criterion = instantiate(cfg.loss.criterion) if cfg.loss.criterion is not None else None
    attack_step_size = cfg.attack.step_size
    return AdversarialTask(
        model,
        criterion,
        epochs=cfg.trainer.epochs,
        eps=check_eps(cfg.attack.eps),
        eps_ramp=cfg.attack.eps_ramp,
        budget=cfg.attack.budget,
        attack_precision=cfg.attack.precision,
        attack_wmse_weight=cfg.attack.wmse_weight,
        attack_sce_weight=cfg.attack.sce_weight,
        aug_weight=cfg.aug_weight,
        awp=AWPConfig(gamma=cfg.awp.gamma, warmup_epoch=cfg.awp.warmup_epoch) if cfg.awp.enabled else None,
        ema_epoch_decay=cfg.ema.epoch_decay,
        ema_iter_decay=cfg.ema.iter_decay,
        ema_iter_start=cfg.ema.iter_start,
        eval_eps=check_eps(cfg.monitor.eps),
        eval_steps=cfg.monitor.steps,
        eval_step_size=check_eps(cfg.monitor.step_size, allow_inexact=True),
        eval_samples=cfg.monitor.samples,
        # DM-AT recipe switches (configs/recipe/at_*_generated.yaml); defaults keep the DKL recipe
        label_smoothing=cfg.label_smoothing,
        attack_steps=cfg.attack.steps,
        attack_step_size=None if attack_step_size is None else check_eps(attack_step_size, allow_inexact=True),
        attack_random_start=cfg.attack.random_start,
        attack_mode=cfg.attack.model_mode,
        attack_objective=cfg.attack.objective,
        ema_iter_schedule=cfg.ema.iter_schedule,
        steps_per_epoch=steps_per_epoch,
        bn_momentum_first_step=cfg.bn_momentum_first_step,
        bn_weight_decay=cfg.bn_weight_decay,
    )


def ce_baseline_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The same model, data and budget trained with plain CE (no adversary), into ``run_dir``."""
    baseline = cfg.copy()
    with open_dict(baseline):
        baseline.loss = OmegaConf.load(CONFIGS / "loss" / "ce.yaml")
        baseline.compare_to_ce = False
        baseline.run_dir = str(run_dir)
        baseline.resume = True
        baseline.logger.mode = "disabled"
        baseline.quiet = True  # its own summary is printed beside the main run's
        baseline.run_name = f"{cfg.run_name}-ce-baseline"
        baseline.cell = None  # not a run of the parent's paper cell
    return baseline


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one model adversarially and return the run summary (with the CE baseline if asked).

    Every check (config, eps, data, the resume identity) runs before the run dir is written.
    """
    config = compose.validate(cfg)
    check_eps(cfg.attack.eps)
    check_recipe(
        budget=cfg.attack.budget,
        steps=cfg.attack.steps,
        step_size=cfg.attack.step_size,
        label_smoothing=cfg.label_smoothing,
    )
    start = compose.prepare(cfg, config, task="at")
    data = compose.build_data(cfg, start)
    datasets = data[0]
    if datasets.normalized:
        log.warning("dataset.builder.normalize=true: attacks then act on normalised inputs, not [0, 1]")
    model = build_model(cfg.model, datasets.num_classes)
    if start.resume_state is None:
        compose.initialise_from(model, cfg)
    if cfg.trainer.channels_last:  # before the AWP proxy and EMA copies are made, so they share it
        model = model.to(memory_format=torch.channels_last)
    task = build_task(cfg, model, datasets.num_classes, steps_per_epoch=len(data[1])).to(start.device)
    session = compose.open_session(start, entry="train_at")
    with_baseline = bool(cfg.compare_to_ce and cfg.loss.criterion is not None)
    failed = True
    try:
        summary = compose.fit(cfg, session, task, data, model_name=cfg.model.name, monitor=MONITOR)
        summary.update(
            model=cfg.model.name, loss=cfg.loss.name, dataset=cfg.dataset.name, seed=cfg.seed, eps=str(cfg.attack.eps)
        )
        session.sink.summarize(summary)
        failed = False
    finally:
        session.close(failed, keep_lock=with_baseline)  # the baseline's numbers go into this run's summary
    try:
        if with_baseline and "continue_with" not in summary:
            baseline = run(ce_baseline_config(cfg, Path(summary["run_dir"]) / "ce_baseline"))
            summary.update(ce_baseline_acc=baseline["acc_last"], ce_baseline_pgd_acc=baseline["test_pgd_acc_last"])
            compose.write_summary(summary, session)
            if not cfg.get("quiet"):
                report_comparison(summary, baseline, cfg, session.dist)
    finally:
        session.release()
    if not cfg.get("quiet"):
        compose.report(summary, session.dist)
    return summary


COMPARED = (
    ("clean accuracy, last epoch (%)", "acc_last"),
    ("clean accuracy, best epoch (%)", "acc_best"),
    ("PGD accuracy, last epoch (%)", "test_pgd_acc_last"),
    ("PGD accuracy, best epoch (%)", "best_pgd_value"),
)


def report_comparison(summary: dict[str, Any], baseline: dict[str, Any], cfg: DictConfig, dist) -> None:
    """The run and its CE baseline side by side (one table on stdout)."""
    if not dist.is_main:
        return
    names = (f"{cfg.loss.name} (adversarial)", "ce (no adversary)")
    rows = [(label, summary.get(key), baseline.get(key)) for label, key in COMPARED]
    width = max(len(label) for label, *_ in rows)
    cells = [max(len(n), 8) for n in names]
    lines = ["", f"{'':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cells, strict=True))]
    for label, ours, theirs in rows:
        values = [f"{v:.2f}" if isinstance(v, float) else "-" for v in (ours, theirs)]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(values, cells, strict=True)))
    lines.append(f"(monitor: PGD-{cfg.monitor.steps} at eps {cfg.monitor.eps} on {cfg.monitor.samples} test images)")
    sys.stdout.write("\n".join(lines) + "\n")


@hydra.main(config_path=str(CONFIGS), config_name="train_at", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    compose.cli(run)(cfg)


def main() -> None:
    """Console script ``ikl-train-at``: the command line checked first, then Hydra."""
    check_command_line("train_at")
    hydra_main()
