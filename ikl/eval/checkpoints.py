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
(d) a RobustBench-style file (``state_dict`` key, or bare).

For (c)/(d) the architecture comes from the ``model`` argument. Weights load strictly through
:func:`ikl.engine.checkpoint.load_model_weights` (``weights_only=True``, ``module.`` stripped).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from ikl.engine.checkpoint import FORMAT, extract_state_dict, load_checkpoint, load_model_weights
from ikl.errors import CheckpointError, ConfigError
from ikl.models import create_model

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = ("ema_epoch", "last")
UNUSED_OFFICIAL_PREFIXES = ("sub_block",)


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
    raise CheckpointError(f"no checkpoints/{wanted}.pt in run directory {run_dir} (found: {available}); pass weights=")


def find_weight_file(checkpoint: str | Path, weights: str | None = None) -> tuple[Path, Path | None]:
    """(weight file, run directory or None) for a run directory or a ``.pt`` path."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise CheckpointError(f"{path} is a directory but not a run directory (no config.yaml); pass a .pt file")
        return _pick_weights(path, weights), path
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .pt file")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    if run_dir is not None and not (run_dir / "config.yaml").is_file():
        run_dir = None
    return path, run_dir


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved training config of a run directory as plain dicts (``{}`` when unreadable)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"cannot read {run_dir / 'config.yaml'}: {exc}") from exc
    return config if isinstance(config, dict) else {}


def _section_name(config: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        section = config.get(key)
        if isinstance(section, dict) and section.get("name"):
            return str(section["name"])
    return None


def _agree(what: str, values: dict[str, Any]) -> Any:
    """The one value the non-None sources agree on; ``ConfigError`` naming them when they differ."""
    given = {source: value for source, value in values.items() if value is not None}
    if len(set(given.values())) > 1:
        detail = ", ".join(f"{source} says {value}" for source, value in given.items())
        raise ConfigError(f"conflicting {what}: {detail}; fix the override or pick the matching checkpoint")
    return next(iter(given.values()), None)


def _drop_unused_official_keys(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    own = model.state_dict()
    dropped = [k for k in state_dict if k not in own and k.startswith(UNUSED_OFFICIAL_PREFIXES)]
    if dropped:
        log.info("dropping %d unused TRADES keys (%s...) before the strict load", len(dropped), dropped[0])
    return {k: v for k, v in state_dict.items() if k not in dropped}


def _layout(container: dict[str, Any], ours: bool) -> str:
    if ours:
        return "ikl"
    return next((key for key in ("state_dict", "model", "net", "model_state_dict") if key in container), "bare")


def _build(model_name: str, num_classes: int) -> nn.Module:
    try:
        return create_model(model_name, num_classes)
    except ValueError as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc


def load_eval_model(
    checkpoint: str | Path,
    *,
    weights: str | None = None,
    model_name: str | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
) -> tuple[nn.Module, ModelSource]:
    """Build the architecture and load the weights of ``checkpoint`` (layouts (a)–(d) above).

    ``model_name``/``num_classes``/``dataset`` are what the evaluation config says; they must agree
    with what the checkpoint and its run directory say, or one ``ConfigError`` line names both.
    """
    file, run_dir = find_weight_file(checkpoint, weights)
    container = load_checkpoint(file)
    ours = container.get("format") == FORMAT
    run_config = read_run_config(run_dir) if run_dir else {}
    run_dataset = run_config.get("dataset") if isinstance(run_config.get("dataset"), dict) else {}
    name = _agree(
        "model names",
        {
            "model=": model_name,
            "the checkpoint": container.get("model_name") if ours else None,
            "the run config": _section_name(run_config, "model", "student"),
        },
    )
    if name is None:
        raise ConfigError(f"{file} does not name its architecture; pass model=<name> (e.g. model=wrn_34_10)")
    classes = _agree(
        "numbers of classes",
        {
            "the dataset": num_classes,
            "the checkpoint": container.get("num_classes") if ours else None,
            "the run config": run_dataset.get("num_classes"),
        },
    )
    # a run trained on extra (generated) data records the data set whose test split it is evaluated on
    test_set = run_dataset.get("test_set", run_dataset.get("name"))
    _agree("datasets", {"dataset=": dataset, "the run config": test_set})
    if classes is None:
        raise ConfigError("the number of classes is unknown; pass dataset=<name>")
    model = _build(name, int(classes))
    state_dict = _drop_unused_official_keys(extract_state_dict(container), model)
    try:
        load_model_weights(model, state_dict, what=f"model {name}")
    except CheckpointError as exc:
        raise CheckpointError(str(exc).replace("<state_dict>", str(file))) from exc
    source = ModelSource(
        file=file,
        sha256=sha256_file(file),
        model_name=name,
        num_classes=int(classes),
        layout=_layout(container, ours),
        run_dir=run_dir,
        dataset=dataset or test_set,
        input_normalization=container.get("input_normalization") if ours else None,
        metadata={k: container[k] for k in ("epoch", "accuracy") if isinstance(container.get(k), (int, float))},
    )
    log.info("loaded %s (%s layout, %s, %d classes) from %s", name, source.layout, source.sha256[:12], classes, file)
    return model, source
