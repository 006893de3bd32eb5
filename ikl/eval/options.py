"""The evaluator's settings, checked before any data or weights are loaded: one ``ConfigError`` line each.

:func:`check_options` takes the plain values of ``configs/eval_autoattack.yaml`` (or an
:class:`~ikl.eval.runner.EvalSpec`'s fields) and returns them normalised: whole numbers as ``int``
(``n_ex=1e4`` is 10000; ``batch_size=2.5``, ``seed=abc`` or ``true`` are refused), lists as lists.
A ``null`` where a value is required, a value of the wrong type, an unknown choice and a device that
is not there are each refused with the key, the value and what to type instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ikl.errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
LOGGER_MODES = ("offline", "online", "disabled")
EXAMPLES = {
    "checkpoint": "checkpoint=<run dir, .pt file or robustbench:<model id>>",
    "eps": "eps=8/255",
    "norm": "norm=Linf",
    "version": "version=standard",
    "n_ex": "n_ex=10000",
    "batch_size": "batch_size=200",
    "seed": "seed=0",
    "device": "device=auto",
    "evaluations": "evaluations=[autoattack]",
    "save_every": "save_every=5",
    "logger.mode": "logger.mode=offline",
    "attacks": "attacks=[apgd-ce,apgd-t]",
}
POSITIVE = ("batch_size", "save_every")


def _shown(value: Any) -> str:
    """A value as it is typed on the command line: ``true``, ``'abc'``, ``2.5``."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _required(key: str, value: Any) -> Any:
    if value is None:
        raise ConfigError(f"{key}=null: a value is required, e.g. {EXAMPLES[key]}")
    return value


def whole_number(key: str, value: Any, *, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum``; integral floats (``1e4``) pass, anything else is refused."""
    _required(key, value)
    what = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={_shown(value)} must be {what}, e.g. {EXAMPLES[key]}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ConfigError(f"{key}={value!r} must be {what} (not a fraction), e.g. {EXAMPLES[key]}")
    if value < minimum:
        if key == "n_ex":  # the message the reliability matrix expects: "n_ex=0 must be positive"
            raise ConfigError(f"{key}={value} must be positive: the number of test examples, e.g. {EXAMPLES[key]}")
        raise ConfigError(f"{key}={value} must be {what}, e.g. {EXAMPLES[key]}")
    return int(value)


def _text(key: str, value: Any, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    _required(key, value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}={value!r} must be text, e.g. {EXAMPLES.get(key, key + '=<text>')}")
    return value


def _text_list(key: str, value: Any, *, required: bool) -> list[str] | None:
    if value is None and not required:
        return None
    _required(key, value)
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}={value!r} must be a list of names, e.g. {EXAMPLES.get(key, key + '=[a,b]')}")
    return list(value)


def check_device(device: Any) -> str:
    """``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``, and there: a missing GPU is refused here."""
    _required("device", device)
    if not (isinstance(device, str) and DEVICE_PATTERN.fullmatch(device)):
        raise ConfigError(f"device={device!r} is not a device; use device=auto, device=cpu or device=cuda (cuda:N)")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device={device} but no CUDA device is visible; use device=cpu or device=auto")
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ConfigError(f"device={device} but only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device=mps but no MPS device is available; use device=cpu or device=auto")
    return device


def check_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluator's values checked and normalised (see the module docstring); others pass through."""
    out = dict(values)
    checkpoint = values.get("checkpoint")
    if checkpoint is None or (isinstance(checkpoint, str) and checkpoint in ("", "???")):
        raise ConfigError(f"checkpoint is required: python eval_autoattack.py {EXAMPLES['checkpoint']}")
    out["checkpoint"] = _text("checkpoint", str(checkpoint) if not isinstance(checkpoint, str) else checkpoint)
    out["n_ex"] = whole_number("n_ex", values.get("n_ex"), minimum=1)
    out["seed"] = whole_number("seed", values.get("seed"), minimum=0)
    for key in POSITIVE:
        out[key] = whole_number(key, values.get(key), minimum=1)
    out["eps"] = _required("eps", values.get("eps"))
    if not isinstance(values.get("allow_inexact_eps", False), bool):
        raise ConfigError(f"allow_inexact_eps={values['allow_inexact_eps']!r} must be true or false")
    for key in ("norm", "version"):
        out[key] = _text(key, values.get(key), required=True)
    out["attacks"] = _text_list("attacks", values.get("attacks"), required=False)
    out["evaluations"] = _text_list("evaluations", values.get("evaluations"), required=True)
    out["device"] = check_device(values.get("device"))
    for key in ("weights", "output_dir", "results_dir", "name"):
        out[key] = _text(key, values.get(key))
    if out["name"] is not None and ("/" in out["name"] or out["name"] in (".", "..")):
        raise ConfigError(
            f"name={out['name']!r} is a file name, not a path; drop the '/' (results_dir sets the folder)"
        )
    if "logger_mode" in values:
        mode = _text("logger.mode", values["logger_mode"], required=True)
        if mode not in LOGGER_MODES:
            raise ConfigError(f"logger.mode={mode!r} is not one of {', '.join(LOGGER_MODES)}")
    return out
