"""Find and load the model to evaluate, from every checkpoint layout we meet.

``checkpoint`` may be

(a) one of our run directories: ``config.yaml`` (the resolved training config, with ``model.name``
    or ``student.name`` and ``dataset.name``/``dataset.num_classes``) and ``checkpoints/*.pt``; the
    file is ``checkpoints/<weights>.pt`` (default ``ema_epoch`` when present, else ``last``);
(b) one of our ``.pt`` files: ``{"format": "ikl-checkpoint", "model": state_dict, "model_name",
    "num_classes", "input_normalization": null | {"mean", "std"}}``;
(c) an official DKL/TRADES/AWP ``.pt``: a bare state_dict, often with ``module.`` prefixes (saved
    from ``nn.DataParallel``) and TRADES' unused ``sub_block1`` weights, dropped here as the DKL
    AutoAttack script does (PAPER.md §2.3);
(d) a RobustBench-style file (``state_dict`` key, or bare), or ``robustbench:<model id>`` for an entry
    of RobustBench's model zoo (:mod:`ikl.eval.robustbench`: its architecture, data set and weights
    in RobustBench's cache layout).

The architecture is, in this order: ``model=`` when given (it wins; where the checkpoint, its run
config or RobustBench name another one, that is stated in the log and in ``ModelSource.notes``), else
what the checkpoint, its run config and the RobustBench zoo say (they must agree). Weights load
strictly (``weights_only=True``, ``module.`` stripped); a state dict that fits no model is one line
that says which architecture family its keys look like and which ``model=`` loads it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ikl.engine.checkpoint import (
    FORMAT,
    extract_state_dict,
    key_mismatch,
    load_checkpoint,
    load_model_weights,
    strip_prefix,
)
from ikl.errors import CheckpointError, ConfigError
from ikl.eval import robustbench
from ikl.models import create_model, list_models

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = ("ema_epoch", "last")
UNUSED_OFFICIAL_PREFIXES = ("sub_block",)
RUN_DIR_CONTENTS = "config.yaml and checkpoints/<name>.pt"


@dataclass
class ModelSource:
    """Where the evaluated weights came from and what they say about themselves."""

    file: Path
    sha256: str
    model_name: str
    num_classes: int
    layout: str
    run_dir: Path | None = None
    dataset: str | None = None
    input_normalization: dict[str, list[float]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    robustbench: robustbench.Entry | None = None
    model_from: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Located:
    """A checkpoint found on disk: the weight file, its run directory and config, or its RobustBench entry."""

    file: Path
    run_dir: Path | None = None
    run_config: dict[str, Any] = field(default_factory=dict)
    robustbench: robustbench.Entry | None = None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _pick_weights(run_dir: Path, weights: str | None) -> Path:
    folder = run_dir / "checkpoints"
    available = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
    names = [weights] if weights else [name for name in DEFAULT_WEIGHTS if name in available]
    for name in names:
        candidate = folder / (name if name.endswith(".pt") else f"{name}.pt")
        if candidate.is_file():
            return candidate
    wanted = weights or " or ".join(DEFAULT_WEIGHTS)
    found = f"found: {', '.join(available)}" if available else "it has none"
    hint = "pass weights=<one of them>" if available else "is the run finished, or did it write no checkpoint yet?"
    raise CheckpointError(f"no checkpoints/{wanted}.pt in run directory {run_dir} ({found}); {hint}")


def find_weight_file(checkpoint: str | Path, weights: str | None = None) -> tuple[Path, Path | None]:
    """(weight file, run directory or None) for a run directory or a ``.pt`` path."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise CheckpointError(
                f"checkpoint={path} is a directory but not a run directory (a run directory holds "
                f"{RUN_DIR_CONTENTS}); pass a run directory or a .pt file"
            )
        return _pick_weights(path, weights), path
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .pt file")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        run_dir = None
    return path, run_dir


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved training config of a run directory as plain dicts (``{}`` when not a mapping)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read {run_dir / 'config.yaml'}: {first}") from exc
    return config if isinstance(config, dict) else {}


def locate(
    checkpoint: str | Path,
    *,
    weights: str | None = None,
    dataset: str | None = None,
    robustbench_dir: str | Path = robustbench.DEFAULT_DIR,
    robustbench_file: str | Path | None = None,
) -> Located:
    """Find ``checkpoint``'s weight file (reading no weights): a run dir, a file or ``robustbench:<id>``."""
    if robustbench.is_reference(checkpoint):
        entry = robustbench.find_entry(str(checkpoint), dataset)
        return Located(robustbench.weight_file(entry, robustbench_dir, robustbench_file), robustbench=entry)
    file, run_dir = find_weight_file(checkpoint, weights)
    return Located(file, run_dir, read_run_config(run_dir) if run_dir else {})


def section_name(config: dict[str, Any], *keys: str) -> str | None:
    """``config[key]["name"]`` for the first of ``keys`` that has one."""
    for key in keys:
        section = config.get(key)
        if isinstance(section, dict) and section.get("name"):
            return str(section["name"])
    return None


def _agree(what: str, values: dict[str, Any], fix: str) -> tuple[Any, str | None]:
    """The one value the non-None sources agree on and who said it; ``ConfigError`` naming them when they differ."""
    given = {source: value for source, value in values.items() if value is not None}
    if len(set(given.values())) > 1:
        detail = ", ".join(f"{source} says {value}" for source, value in given.items())
        raise ConfigError(f"conflicting {what}: {detail}; {fix}")
    return next(iter(given.values()), None), next(iter(given), None)


def _choose_model(explicit: str | None, sources: dict[str, Any]) -> tuple[str | None, str | None, list[str]]:
    """``model=`` wins over the checkpoint's own sources (stated); else those sources must agree."""
    if explicit is None:
        name, origin = _agree("model names", sources, "the run directory is inconsistent; pass model=<name>")
        return name, origin, []
    others = {source: value for source, value in sources.items() if value is not None and value != explicit}
    notes = [f"model={explicit} was given although {source} says {value}" for source, value in others.items()]
    return explicit, "model=", notes


def _drop_unused_official_keys(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    own = model.state_dict()
    dropped = [k for k in state_dict if k not in own and k.startswith(UNUSED_OFFICIAL_PREFIXES)]
    if dropped:
        log.info("dropping %d unused TRADES keys (%s...) before the strict load", len(dropped), dropped[0])
    return {k: v for k, v in state_dict.items() if k not in dropped}


def _strip_model_prefix(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Drop a ``model.`` prefix that every key has and the model's own keys lack (RobustBench strips it too)."""
    own = model.state_dict()
    if state_dict and all(k.startswith("model.") for k in state_dict) and not any(k.startswith("model.") for k in own):
        return strip_prefix(state_dict, ("model.",))
    return state_dict


def _layout(container: dict[str, Any], ours: bool) -> str:
    if ours:
        return "ikl"
    return next((key for key in ("state_dict", "model", "net", "model_state_dict") if key in container), "bare")


def _build(model_name: str, num_classes: int) -> nn.Module:
    try:
        return create_model(model_name, num_classes)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc


# --------------------------------------------------------------------------- what a state dict looks like
def _classes(state_dict: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            return int(value.shape[0])
    return None


def _count(state_dict: dict[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def guess_architecture(state_dict: dict[str, Any]) -> tuple[str, str | None, int | None] | None:
    """(family description, the zoo name it would have, number of classes) for known key layouts."""
    keys = set(state_dict)
    conv = state_dict.get("layer.0.block.0.conv_0.weight")
    if {"init_conv.weight", "logits.weight"} <= keys and isinstance(conv, torch.Tensor):
        depth, width = 6 * _count(state_dict, r"layer\.0\.block\.(\d+)\.") + 4, int(conv.shape[0]) // 16
        family = (
            f"RobustBench's DMWideResNet-{depth}-{width} (the DeepMind/DM-AT WideResNet: SiLU, explicit padding, "
            "normalisation inside the model)"
        )
        return family, f"wrn_{depth}_{width}_swish", _classes(state_dict, "logits.weight")
    if {"conv_2d.weight", "logits.weight"} <= keys:
        return "RobustBench's DMPreActResNet (DeepMind PreAct ResNet: SiLU, normalisation inside)", None, None
    conv = state_dict.get("block1.layer.0.conv1.weight")
    if {"conv1.weight", "fc.weight"} <= keys and isinstance(conv, torch.Tensor):
        depth, widen = 6 * _count(state_dict, r"block1\.layer\.(\d+)\.") + 4, int(conv.shape[0]) // 16
        family = f"a TRADES/AWP/RobustBench WideResNet-{depth}-{widen} (ReLU, no normalisation inside)"
        return family, f"wrn_{depth}_{widen}", _classes(state_dict, "fc.weight")
    return None


def _closest_zoo_model(state_dict: dict[str, Any], num_classes: int) -> tuple[str, float] | None:
    """The zoo model sharing the largest share of (key, shape) pairs with ``state_dict``."""
    wanted = {(k, tuple(v.shape)) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    best: tuple[str, float] | None = None
    for name in list_models():
        try:
            with torch.device("meta"):
                own = {(k, tuple(v.shape)) for k, v in create_model(name, num_classes).state_dict().items()}
        except Exception:  # noqa: BLE001 - a model that cannot be built on meta is just not a candidate
            continue
        share = len(own & wanted) / max(len(own | wanted), 1)
        if best is None or share > best[1]:
            best = (name, share)
    return best


def fit_hint(state_dict: dict[str, Any], tried: str, num_classes: int) -> str:
    """What a state dict that does not fit ``tried`` looks like, and the ``model=`` that would load it."""
    guess = guess_architecture(state_dict)
    if guess is not None:
        family, name, classes = guess
        where = f"its keys are {family}"
        if classes is not None and classes != num_classes:
            where += f" with {classes} classes"
        if name is None:
            return f"{where}; our zoo has no such model"
        if name == tried:
            return f"{where}, i.e. model={name}: check num_classes and that the file is complete"
        if name in list_models():
            return f"{where}: pass model={name}"
        return f"{where}; our zoo has no {name}"
    closest = _closest_zoo_model(state_dict, num_classes)
    if closest is not None and closest[1] >= 0.5 and closest[0] != tried:
        return f"its keys look most like model={closest[0]} ({closest[1]:.0%} of keys and shapes agree)"
    return "its keys fit no model of our zoo (ikl.models.list_models()); check the file and model="


def _check_fit(model: nn.Module, state_dict: dict[str, Any], *, name: str, num_classes: int, file: Path) -> None:
    missing, unexpected, wrong = key_mismatch(model, state_dict)
    if not (missing or unexpected or wrong):
        return
    parts = [f"shape mismatch {wrong[:2]}"] if wrong else []
    parts += [f"{len(missing)} missing keys {missing[:2]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected keys {unexpected[:2]}"] if unexpected else []
    raise CheckpointError(
        f"{file} does not fit model={name} ({num_classes} classes): {'; '.join(parts)}; "
        f"{fit_hint(state_dict, name, num_classes)}"
    )


def _run_normalization(run_dataset: dict[str, Any]) -> dict[str, list[float]] | None:
    """The input normalisation a run's config records (``dataset.builder.normalize`` with mean/std)."""
    builder = run_dataset.get("builder") if isinstance(run_dataset.get("builder"), dict) else {}
    mean, std = builder.get("mean"), builder.get("std")
    if builder.get("normalize") and isinstance(mean, list) and isinstance(std, list):
        return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    return None


def load_eval_model(
    checkpoint: str | Path | Located,
    *,
    weights: str | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
) -> tuple[nn.Module, ModelSource]:
    """Build the architecture and load the weights of ``checkpoint`` (layouts (a)–(d) above).

    ``model_name`` is an explicit choice (it wins, and a conflict with what the checkpoint says is
    stated in ``ModelSource.notes``); ``num_classes`` and ``dataset`` are the evaluation's data set:
    the classes must agree with the checkpoint's, or one ``ConfigError`` line names both.
    """
    located = checkpoint if isinstance(checkpoint, Located) else locate(checkpoint, weights=weights, dataset=dataset)
    file, run_config, entry = located.file, located.run_config, located.robustbench
    container = load_checkpoint(file)
    ours = container.get("format") == FORMAT
    run_dataset = run_config.get("dataset") if isinstance(run_config.get("dataset"), dict) else {}
    name, origin, notes = _choose_model(
        model_name,
        {
            "the checkpoint": container.get("model_name") if ours else None,
            "the run config": section_name(run_config, "model", "student"),
            "RobustBench's model zoo": entry.model if entry else None,
        },
    )
    if name is None:
        raise ConfigError(f"{file} does not name its architecture; pass model=<name> (e.g. model=wrn_34_10)")
    classes, _ = _agree(
        "numbers of classes",
        {
            "the dataset": num_classes,
            "the checkpoint": container.get("num_classes") if ours else None,
            "the run config": run_dataset.get("num_classes"),
            "RobustBench's model zoo": entry.num_classes if entry else None,
        },
        "evaluate on a data set with the model's number of classes (dataset=<name>)",
    )
    if classes is None:
        raise ConfigError("the number of classes is unknown; pass dataset=<name>")
    model = _build(name, int(classes))
    state_dict = _strip_model_prefix(_drop_unused_official_keys(extract_state_dict(container), model), model)
    _check_fit(model, state_dict, name=name, num_classes=int(classes), file=file)
    load_model_weights(model, state_dict, what=f"model {name}")
    for note in notes:
        log.warning("%s", note)
    # a RobustBench entry's zoo model (like RobustBench's class) standardises inside: nothing to add
    normalization = container.get("input_normalization") if ours else _run_normalization(run_dataset)
    source = ModelSource(
        file=file,
        sha256=sha256_file(file),
        model_name=name,
        num_classes=int(classes),
        layout="robustbench" if entry else _layout(container, ours),
        run_dir=located.run_dir,
        dataset=dataset or run_dataset.get("test_set") or run_dataset.get("name") or (entry.dataset if entry else None),
        input_normalization=normalization,
        metadata={k: container[k] for k in ("epoch", "accuracy") if isinstance(container.get(k), (int, float))},
        robustbench=entry,
        model_from=origin,
        notes=notes,
    )
    log.info("loaded %s (%s layout, %s, %d classes) from %s", name, source.layout, source.sha256[:12], classes, file)
    return model, source
