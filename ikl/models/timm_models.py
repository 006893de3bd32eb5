"""Any ``timm`` model by name (``create_model("timm/<name>", ...)``), with its pretrained weights and,
for a teacher fed another network's batches, its own input normalisation and resolution.

* ``pretrained=False``: random weights (``timm.create_model(name, pretrained=False)``), offline.
* ``pretrained=True``: timm's own weights for ``name`` (``<architecture>.<tag>``, e.g.
  ``beit_large_patch16_224.in22k_ft_in22k_in1k``), from the Hugging Face cache
  (``$HF_HOME/hub``, or ``cache_dir``) or, when the network allows, the hub.
* ``pretrained="<file>"``: a local weights file (``.safetensors``, or a ``torch.save`` state dict,
  possibly inside ``state_dict``/``model``; ``weights_only`` loading) through timm's own loader,
  so timm's checkpoint filters (e.g. the original BEiT layout) apply. Its classifier must have
  ``pretrained_num_classes`` rows (default: ``num_classes``).

``input_mean``/``input_std`` (the normalisation of the batches the model will be given) attach an
:class:`InputAdapter` that maps those batches to what the weights expect: the normalisation and
input size of the model's ``pretrained_cfg`` (``timm.data.resolve_model_data_config``), resized
with its interpolation. The adapter holds no saved state, so ``state_dict`` keys stay timm's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ikl.errors import CheckpointError

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "area": "area"}


class InputAdapter(nn.Module):
    """Re-normalise (and resize) a batch: from ``(x - source_mean) / source_std`` at any size to
    ``(x - target_mean) / target_std`` at ``size`` (``None``: keep the size).

    The re-normalisation is the per-channel affine map ``x * s + b`` with ``s = source_std /
    target_std`` and ``b = (source_mean - target_mean) / target_std``, skipped when it is the
    identity; resizing uses ``interpolation`` (antialiased when shrinking). Buffers are
    non-persistent: nothing appears in ``state_dict``.
    """

    def __init__(
        self,
        source_mean: Sequence[float],
        source_std: Sequence[float],
        target_mean: Sequence[float],
        target_std: Sequence[float],
        size: Sequence[int] | None = None,
        interpolation: str = "bicubic",
    ) -> None:
        super().__init__()
        src_m, src_s, tgt_m, tgt_s = (
            torch.as_tensor(v, dtype=torch.float64) for v in (source_mean, source_std, target_mean, target_std)
        )
        if (src_s <= 0).any() or (tgt_s <= 0).any():
            raise ValueError(f"standard deviations must be positive, got {source_std} and {target_std}")
        scale, shift = src_s / tgt_s, (src_m - tgt_m) / tgt_s
        self.identity = bool(
            torch.allclose(scale, torch.ones_like(scale)) and torch.allclose(shift, torch.zeros_like(shift))
        )
        self.register_buffer("scale", scale.float().reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.float().reshape(1, -1, 1, 1), persistent=False)
        self.size = tuple(int(s) for s in size) if size is not None else None
        if interpolation not in _MODES:
            raise ValueError(f"interpolation {interpolation!r} is not one of {sorted(_MODES)}")
        self.interpolation = interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.identity:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            mode = _MODES[self.interpolation]
            x = F.interpolate(
                x,
                size=self.size,
                mode=mode,
                align_corners=False if mode in ("bilinear", "bicubic") else None,
                antialias=shrink and mode in ("bilinear", "bicubic"),
            )
        return x

    def extra_repr(self) -> str:
        return f"identity_norm={self.identity}, size={self.size}, interpolation={self.interpolation}"


def _adapt_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook: the model's first argument goes through its ``input_adapter``."""
    return (module.input_adapter(args[0]), *args[1:])


def attach_input_adapter(model: nn.Module, adapter: InputAdapter) -> nn.Module:
    """Run every input of ``model`` through ``adapter`` first (a child module + forward pre-hook,
    so ``state_dict`` keys and the model's class are unchanged)."""
    model.input_adapter = adapter
    model.register_forward_pre_hook(_adapt_input)
    return model


def data_config(model: nn.Module) -> dict[str, Any]:
    """What the model's weights expect: ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``."""
    from timm.data import resolve_model_data_config

    return dict(resolve_model_data_config(model))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def timm_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool | str | os.PathLike | None = False,
    pretrained_num_classes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    input_mean: Sequence[float] | None = None,
    input_std: Sequence[float] | None = None,
    resize: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(name, num_classes=num_classes, **kwargs)`` with the weights ``pretrained``
    names (see the module docstring); ``input_mean``/``input_std`` attach an :class:`InputAdapter`.

    Raises:
        ValueError: timm has no model ``name``.
        CheckpointError: the pretrained weights cannot be found or do not fit (one line).
    """
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ValueError(f"timm has no model {name!r}; see timm.list_models() (timm {timm.__version__})")
    options: dict[str, Any] = dict(kwargs)
    where = "timm's cache / the Hugging Face hub"
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained).lower() not in ("", "true", "false"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise CheckpointError(f"pretrained weights file {path} for timm/{name} does not exist; check the path")
        options["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": pretrained_num_classes or num_classes}
        use_pretrained, where = True, str(path)
    else:
        use_pretrained = str(pretrained).lower() == "true" if isinstance(pretrained, str) else bool(pretrained)
    if cache_dir is not None:
        options["cache_dir"] = str(cache_dir)
    try:
        model = timm.create_model(name, pretrained=use_pretrained, num_classes=num_classes, **options)
    except (RuntimeError, OSError, ValueError, KeyError) as err:
        if not use_pretrained:
            raise
        hint = (
            "check that the file holds this architecture's weights (and pretrained_num_classes)"
            if where != "timm's cache / the Hugging Face hub"
            else "with no network, put the weights in the Hugging Face cache ($HF_HOME/hub, e.g. "
            f"`huggingface-cli download timm/{name}` on a connected machine) or pass pretrained=<local file>"
        )
        raise CheckpointError(
            f"timm could not load pretrained weights for {name} from {where} ({_one_line(err)}); {hint}"
        ) from err
    if use_pretrained and pretrained_num_classes is None and where == "timm's cache / the Hugging Face hub":
        trained_for = (getattr(model, "pretrained_cfg", None) or {}).get("num_classes")
        if trained_for and trained_for != num_classes:
            log.warning(
                "timm/%s: pretrained for %s classes, built for %d: its classifier is newly initialised",
                name,
                trained_for,
                num_classes,
            )
    if input_mean is not None or input_std is not None:
        if input_mean is None or input_std is None:
            raise ValueError("give both input_mean and input_std (the normalisation of the batches the model is fed)")
        cfg = data_config(model)
        size = tuple(cfg["input_size"][-2:]) if resize else None
        adapter = InputAdapter(
            input_mean, input_std, cfg["mean"], cfg["std"], size, cfg.get("interpolation", "bicubic")
        )
        attach_input_adapter(model, adapter)
        log.info("timm/%s: inputs mapped to mean %s, std %s, size %s", name, cfg["mean"], cfg["std"], size)
    return model
