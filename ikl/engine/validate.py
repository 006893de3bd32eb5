"""Config checks that run before anything is built: one ``ConfigError`` line per mistake.

The checks walk the resolved config as a plain dict and look at keys by name, so every config
group (loss, attack, trainer, dataset) is covered without a schema per group.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ikl.errors import ConfigError

POSITIVE_INT_KEYS = {
    "batch_size",
    "test_batch_size",
    "epochs",
    "num_classes",
    "steps_per_epoch",
    "log_every",  # trainer: step % log_every
    "save_every",  # trainer: epoch % save_every; AutoAttack: batches per state save
    "aug_repeats",  # trainer: repeated augmentation (1 = off)
}
NON_NEGATIVE_INT_KEYS = {
    "finite_check_every",
    "workers",
    "steps",
    "eval_steps",
    "eval_samples",
    "samples",
    "n_ex",
    "seed",
}
# Switches: true or false, nothing else (YAML's `yes`, a 0/1 or a string would slip through).
BOOL_KEYS = {
    "normalize",
    "class_wise",
    "break_asymmetry",
    "download",
    "compare_to_ce",
    "progress",
    "nesterov",
    "cuda_graphs",
    "compile",
    "channels_last",
    "allow_inexact_eps",
    "eps_ramp",
    "enabled",
    "skip_bad_images",
}
# Numbers or null (null: off / not used), never a string or a switch: a typo would be read as a value.
NUMBER_KEYS = {"lr", "grad_clip", "warmup_epochs", "label_smoothing", "alpha", "beta", "gamma", "kd_weight"}
# Whole numbers or null.
OPTIONAL_INT_KEYS = {"stop_after", "threads", "max_train_samples", "max_test_samples"}
# Counts that may be null by design (null: the budget decides; see configs/train_at.yaml).
NULLABLE_PATHS = {"attack.steps"}
# Numbers that must be given (null would fail deep inside a constructor).
REQUIRED_NUMBER_KEYS = {"lr", "momentum", "weight_decay", "ce_weight"}
# String values with a fixed set of choices everywhere they appear (a typo would otherwise fail
# deep inside a constructor with a traceback, or not at all).
CHOICES = {
    "amp": ("off", "bf16", "fp16"),
    "loader": ("auto", "standard", "device"),
    "budget": ("as_run", "as_described", "low", "fixed"),
    "precision": ("fp32", "amp"),
    # generated-data AT: the DM-AT recipe switches (ikl.tasks.at, ikl.data.generated)
    "random_start": ("normal", "uniform"),
    "model_mode": ("eval", "batch_stats"),
    "objective": ("loss", "kl"),
    "iter_schedule": ("constant", "dm_at"),
    "sampling": ("with_replacement", "without_replacement"),
}
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            yield child, str(key), value
            yield from _walk(value, child)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(path: str, key: str, value: Any) -> None:
    """Raise ConfigError if ``value`` is out of range for a key of this name."""
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{path}={value!r} is not one of {', '.join(CHOICES[key])}")
    if key == "device" and value is not None and not (isinstance(value, str) and DEVICE_PATTERN.fullmatch(value)):
        raise ConfigError(f"{path}={value!r} is not a device; use auto, cpu or cuda (cuda:N)")
    integer = key in POSITIVE_INT_KEYS | NON_NEGATIVE_INT_KEYS
    if value is None:
        if (integer or key in REQUIRED_NUMBER_KEYS) and path not in NULLABLE_PATHS:
            raise ConfigError(f"{path} is null but needs a value; set {path}=<number>")
        if key in BOOL_KEYS:
            raise ConfigError(f"{path} is null; set {path}=true or {path}=false")
        return
    if key in BOOL_KEYS and not isinstance(value, bool):
        raise ConfigError(f"{path}={value!r} must be true or false")
    if integer and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{path}={value!r} must be a whole number")
    numeric = key in REQUIRED_NUMBER_KEYS | NUMBER_KEYS or key.endswith(("temperature", "_weight"))
    if numeric and not _is_number(value):
        raise ConfigError(f"{path}={value!r} must be a number")
    if key in OPTIONAL_INT_KEYS and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ConfigError(f"{path}={value!r} must be a whole number or null")
    if key in OPTIONAL_INT_KEYS and value <= 0:
        raise ConfigError(f"{path}={value} must be a positive whole number (or null)")
    if not _is_number(value):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}={value} must be a finite number")
    if key.endswith("temperature") and value <= 0:
        raise ConfigError(f"{path}={value} must be > 0 (a temperature divides the logits)")
    if (key.endswith("_weight") or key in {"alpha", "beta", "gamma", "kd_weight"}) and value < 0:
        raise ConfigError(f"{path}={value} must be >= 0 (a negative weight would maximise that term)")
    if key in POSITIVE_INT_KEYS and value <= 0:
        raise ConfigError(f"{path}={value} must be a positive whole number")
    if key in NON_NEGATIVE_INT_KEYS and value < 0:
        raise ConfigError(f"{path}={value} must be >= 0")
    if key in {"lr", "grad_clip"} and value <= 0:
        raise ConfigError(f"{path}={value} must be > 0" + (" (null turns clipping off)" if key == "grad_clip" else ""))
    if key == "momentum" and not 0 <= value < 1:
        raise ConfigError(f"{path}={value} must be in [0, 1)")
    if key == "weight_decay" and value < 0:
        raise ConfigError(f"{path}={value} must be >= 0 (a negative decay grows the weights)")
    if key == "iter_start" and not 0 <= value <= 1:
        raise ConfigError(f"{path}={value} must be in [0, 1] (a fraction of the training epochs)")
    if key in {"eps", "epsilon", "step_size"} and not 0 <= value <= 1:
        raise ConfigError(
            f"{path}={value} must be in [0, 1] (inputs live in [0, 1]; write 8/255 as 0.0313725 or '8/255')"
        )
    if key.endswith("decay") and not 0 <= value < 1 and "weight" not in key:
        raise ConfigError(f"{path}={value} must be in [0, 1)")


def validate_config(config: Mapping[str, Any]) -> None:
    """Check every value of a resolved config; raise one ConfigError naming the first bad key."""
    for path, key, value in _walk(config):
        if path.startswith("hydra"):
            continue
        check_value(path, key, value)
