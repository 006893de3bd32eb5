"""AutoAttack evaluation of one checkpoint (plus optional PGD-k / CW-k, paper Table 11).

    python eval_autoattack.py checkpoint=runs/at_cifar100 dataset=cifar100
    python eval_autoattack.py checkpoint=official.pt model=wrn_34_10 dataset=cifar100 evaluations=[autoattack,pgd20,cw20]
    python eval_autoattack.py checkpoint=ckpt.pt dataset=digits n_ex=64 version=custom attacks=[apgd-ce]

Composition only: the dataset is built with ``normalize=false`` (models take [0, 1] inputs; a
checkpoint trained on normalised inputs is wrapped in ``NormalizedModel``) and everything else is
:func:`ikl.eval.evaluate`. Rerunning the same command resumes a killed evaluation. A user mistake
prints one line to stderr and exits with status 2.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ikl.cli.overrides import check_command_line
from ikl.cli.paths import CONFIGS
from ikl.data import DataError
from ikl.errors import ConfigError, UserError
from ikl.eval import EvalSpec, check_eps, evaluate

log = logging.getLogger("ikl.eval_autoattack")


def _model_name(model: Any) -> str | None:
    if isinstance(model, DictConfig):
        return model.get("name")
    return model


def _test_set_factory(cfg: DictConfig) -> Callable[[], Dataset]:
    builder = OmegaConf.to_container(cfg.dataset.builder, resolve=True)
    builder["normalize"] = False  # the attack's threat model is defined on [0, 1] inputs
    build = hydra.utils.get_method(builder.pop("_target_"))
    return lambda: build(**builder).test


def spec_from_config(cfg: DictConfig) -> EvalSpec:
    """The plain :class:`EvalSpec` of a composed ``eval_autoattack`` config."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ConfigError("checkpoint is required: python eval_autoattack.py checkpoint=<run dir or .pt file>")
    check_eps(cfg.eps, allow_inexact=cfg.allow_inexact_eps)  # fail before any data or weights are loaded
    return EvalSpec(
        checkpoint=str(cfg.checkpoint),
        dataset=cfg.dataset.name,
        num_classes=cfg.dataset.num_classes,
        weights=cfg.weights,
        model=_model_name(cfg.model),
        eps=cfg.eps,
        allow_inexact_eps=cfg.allow_inexact_eps,
        norm=cfg.norm,
        version=cfg.version,
        attacks=list(cfg.attacks) if cfg.attacks else None,
        n_ex=cfg.n_ex,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        evaluations=list(cfg.evaluations),
        output_dir=cfg.output_dir,
        results_dir=cfg.results_dir,
        name=cfg.name,
        save_every=cfg.save_every,
        logger_mode=cfg.logger.mode,
        logger_project=cfg.logger.project,
    )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns the result dict also written to ``result.json``."""
    spec = spec_from_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    return evaluate(spec, _test_set_factory(cfg), config=config)


@hydra.main(config_path=str(CONFIGS), config_name="eval_autoattack", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except (UserError, DataError) as exc:
        print(f"eval_autoattack: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # e.g. an output_dir that cannot be created: one line, nothing written
        print(
            f"eval_autoattack: cannot write {exc.filename or 'the output'}: {exc.strerror or exc}; choose another output_dir",
            file=sys.stderr,
        )
        sys.exit(2)
    log.info(
        "clean %.2f%%, AutoAttack %s, worst case %.2f%%: %s",
        100 * result["clean_acc"],
        "n/a" if result["robust_acc"] is None else f"{100 * result['robust_acc']:.2f}%",
        100 * result["worst_case_robust_acc"],
        result["output_dir"],
    )


def main() -> None:
    """Console script ``ikl-eval-autoattack``: the command line checked first, then Hydra."""
    check_command_line("eval_autoattack")
    hydra_main()
