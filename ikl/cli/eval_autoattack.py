"""AutoAttack evaluation of one checkpoint (plus optional PGD-k / CW-k, paper Table 11).

    python eval_autoattack.py checkpoint=outputs/at-cifar100-ikl_at-wrn_34_10-s0/<time>
    python eval_autoattack.py checkpoint=official.pt model=wrn_34_10 dataset=cifar100 evaluations=[autoattack,pgd20,cw20]
    python eval_autoattack.py checkpoint=robustbench:cifar100/Cui2023Decoupled_WRN-34-10
    python eval_autoattack.py checkpoint=ckpt.pt dataset=digits n_ex=64 version=custom attacks=[apgd-ce]

Composition only. The data set, the model and its input normalisation come from the target unless
given on the command line: a run directory's ``config.yaml`` (its ``dataset`` section as trained,
e.g. the digits split, the data root) and checkpoint metadata, or the RobustBench entry; else the
config's defaults. An explicit ``dataset=``/``model=`` always wins; where it contradicts the run or
checkpoint it is allowed, and stated in the log and in the result JSON (``overrides_stated``), except a
different number of classes, which cannot work. ``dataset.*`` values given on the command line apply
on top of the data set that was taken over. The dataset is built with ``normalize=false`` (models take
[0, 1] inputs; a checkpoint trained on normalised inputs is wrapped in ``NormalizedModel``) and
everything else is :func:`ikl.eval.evaluate`. Every setting is checked before any data or weights are
loaded. Rerunning the same command resumes a killed evaluation. A user mistake prints one line to
stderr and exits with status 2.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ikl.cli.overrides import check_command_line, parse
from ikl.cli.paths import CONFIGS
from ikl.data import DataError
from ikl.errors import ConfigError, UserError
from ikl.eval import EvalSpec, evaluate, robustbench
from ikl.eval.checkpoints import find_weight_file, read_run_config
from ikl.eval.runner import check_spec

log = logging.getLogger("ikl.eval_autoattack")
DEFAULT_DATASET_NOTE = "the eval config's default (the checkpoint does not say which data set)"


@dataclass
class Given:
    """What the command line set: config-group choices (``dataset=``) and values (``dataset.builder.root=``)."""

    groups: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)

    @classmethod
    def from_overrides(cls, overrides: list[str]) -> Given:
        given = cls()
        for override in parse(list(overrides)):
            key = override.key_or_group
            (given.keys if "." in key else given.groups).add(key)
        return given


def command_line_overrides() -> list[str]:
    """The overrides of the running Hydra job (none outside one)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _model_name(model: Any) -> str | None:
    if isinstance(model, DictConfig):
        return model.get("name")
    return model


def _dataset_config(name: str) -> dict[str, Any] | None:
    """``configs/dataset/<name>.yaml`` resolved, as plain dicts (None when there is no such file)."""
    path = CONFIGS / "dataset" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) if path.is_file() else None


def _set(section: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        section = section.setdefault(part, {})
    section[path[-1]] = value


@dataclass
class DataChoice:
    section: dict[str, Any]  # name, num_classes, builder
    origin: str
    notes: list[str]
    entry: robustbench.Entry | None = None


def _target_dataset(cfg: DictConfig, explicit: str | None) -> tuple[str, str, dict[str, Any] | None, Any] | None:
    """(who says, data set name, its dataset section or None, RobustBench entry) for the checkpoint."""
    checkpoint = str(cfg.checkpoint)
    if robustbench.is_reference(checkpoint):
        entry = robustbench.find_entry(checkpoint, explicit)
        return "RobustBench", entry.dataset, _dataset_config(entry.dataset), entry
    _, run_dir = find_weight_file(checkpoint, cfg.weights)
    if run_dir is None:
        return None
    section = read_run_config(run_dir).get("dataset")
    if not (isinstance(section, dict) and section.get("name")):
        return None
    if not (isinstance(section.get("builder"), dict) and section["builder"].get("_target_")):
        section = _dataset_config(str(section["name"])) or section  # an older run config: our config of that name
    return "the run config", str(section["name"]), section, None


def choose_dataset(cfg: DictConfig, given: Given) -> DataChoice:
    """The data set to evaluate on: ``dataset=`` if given, else the run's / RobustBench's, else the default."""
    composed = OmegaConf.to_container(cfg.dataset, resolve=True)
    explicit = "dataset" in given.groups
    target = _target_dataset(cfg, composed["name"] if explicit else None)
    entry = target[3] if target else None
    if explicit:
        notes = []
        if target is not None and target[1] != composed["name"]:
            notes.append(f"dataset={composed['name']} was given although {target[0]} says {target[1]}")
        return DataChoice(composed, "dataset=", notes, entry)
    if target is None:
        return DataChoice(composed, DEFAULT_DATASET_NOTE, [], entry)
    who, name, section, entry = target
    if section is None or not isinstance(section.get("builder"), dict):
        raise ConfigError(
            f"{who} names data set {name!r}, which has no configs/dataset/{name}.yaml; pass dataset=<name>"
        )
    section = copy.deepcopy(section)
    for key in sorted(k for k in given.keys if k.startswith("dataset.")):
        value = OmegaConf.select(cfg, key)
        _set(
            section,
            key.split(".")[1:],
            OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value,
        )
    return DataChoice(section, who, [], entry)


def _test_set_factory(section: dict[str, Any]) -> Callable[[], Dataset]:
    builder = copy.deepcopy(section["builder"])
    builder["normalize"] = False  # the attack's threat model is defined on [0, 1] inputs
    try:
        build = hydra.utils.get_method(builder.pop("_target_"))
    except Exception as exc:  # noqa: BLE001 - a run config naming a builder that is not importable
        raise ConfigError(f"dataset builder {section['builder'].get('_target_')!r} cannot be imported: {exc}") from exc
    return lambda: build(**builder).test


def _values(cfg: DictConfig) -> dict[str, Any]:
    """The evaluator's own settings, as plain values (``checkpoint: ???`` as None)."""
    keys = (
        "weights",
        "eps",
        "allow_inexact_eps",
        "norm",
        "version",
        "attacks",
        "n_ex",
        "batch_size",
        "seed",
        "device",
        "evaluations",
        "save_every",
        "output_dir",
        "results_dir",
        "name",
    )
    plain = OmegaConf.to_container(cfg, resolve=True)
    values = {key: plain.get(key) for key in keys}
    values["checkpoint"] = None if OmegaConf.is_missing(cfg, "checkpoint") else cfg.checkpoint
    values["logger_mode"], values["logger_project"] = cfg.logger.mode, cfg.logger.project
    norm = cfg.get("input_normalization", "auto")
    values["input_normalization"] = OmegaConf.to_container(norm) if isinstance(norm, DictConfig) else norm
    rb = cfg.get("robustbench") or {}
    values["robustbench_dir"] = rb.get("dir") or robustbench.DEFAULT_DIR
    values["robustbench_file"] = rb.get("file")
    return values


def spec_from_config(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[EvalSpec, dict[str, Any]]:
    """The checked :class:`EvalSpec` of a composed ``eval_autoattack`` config and the dataset section to use.

    ``overrides`` are the command line's (default: the running Hydra job's); they decide what was
    given explicitly. Every setting is checked first, before any file but the run's config is read.
    """
    given = Given.from_overrides(command_line_overrides() if overrides is None else overrides)
    values = _values(cfg)
    provisional = EvalSpec(dataset=cfg.dataset.name, num_classes=cfg.dataset.num_classes, **values)
    spec = check_spec(provisional)  # one line, exit 2, before any data or weights
    data = choose_dataset(cfg, given)
    builder = data.section.get("builder", {})
    spec = replace(
        spec,
        dataset=str(data.section["name"]),
        num_classes=int(data.section["num_classes"]),
        model=_model_name(cfg.model),
        max_test_samples=builder.get("max_test_samples"),
        provenance={"dataset": data.origin},
        notes=data.notes,
    )
    if data.origin == DEFAULT_DATASET_NOTE:
        log.info("dataset %s: %s", spec.dataset, DEFAULT_DATASET_NOTE)
    elif data.origin != "dataset=":
        log.info("dataset %s: from %s", spec.dataset, data.origin)
    return spec, data.section


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint``; returns the result dict also written to ``result.json``.

    ``overrides``: the command line (default: the running Hydra job's), which says what was given.
    """
    spec, section = spec_from_config(cfg, overrides)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["dataset"] = section  # the data set actually used
    return evaluate(spec, _test_set_factory(section), config=config)


def _counted(share: float | None, n: int) -> str:
    return "n/a" if share is None else f"{100 * share:.2f}% ({round(share * n)}/{n})"


@hydra.main(config_path=str(CONFIGS), config_name="eval_autoattack", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    try:
        result = run(cfg)
    except (UserError, DataError) as exc:
        sys.stderr.write(f"eval_autoattack: {exc}\n")
        sys.exit(2)
    except OSError as exc:  # e.g. an output_dir that cannot be created: one line, nothing written
        sys.stderr.write(
            f"eval_autoattack: cannot write {exc.filename or 'the output'}: {exc.strerror or exc}; "
            "choose another output_dir\n"
        )
        sys.exit(2)
    n = result["n_ex"]
    log.info(
        "clean %s, AutoAttack %s, worst case %s: %s",
        _counted(result["clean_acc"], n),
        _counted(result["robust_acc"], n),
        _counted(result["worst_case_robust_acc"], n),
        Path(result["output_dir"]),
    )


def main() -> None:
    """Console script ``ikl-eval-autoattack``: the command line checked first, then Hydra."""
    check_command_line("eval_autoattack")
    hydra_main()
