"""Models and task options from their config sections (the ``student``, ``teacher`` and ``model`` groups).

A model section is either

* ``name`` (+ optional ``kwargs``): ``ikl.models.create_model(name, num_classes, **kwargs)``: the zoo,
  ``timm/<any timm model>`` (``kwargs``: ``pretrained``, ``input_mean``/``input_std``,
  ``drop_path_rate``, ...) or a name added with ``ikl.models.register_model``; or
* ``builder``: a Hydra ``_target_`` node called with ``num_classes=`` (your own model class or
  function, docs/custom.md); ``name`` then only labels the run.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ikl.errors import ConfigError, UserError
from ikl.models import create_model


def _kwargs(section: DictConfig) -> dict[str, Any]:
    kwargs = section.get("kwargs")
    return dict(OmegaConf.to_container(kwargs, resolve=True)) if kwargs else {}


def build_model(section: DictConfig, num_classes: int, what: str = "model") -> nn.Module:
    """The model a config section describes (see the module docstring), with ``num_classes`` outputs."""
    builder = section.get("builder")
    if builder is not None:
        try:
            model = instantiate(builder, num_classes=num_classes)
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, UserError):
                raise cause from exc
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise ConfigError(f"{what}.builder ({builder.get('_target_')}) failed: {first}") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{what}.builder returned a {type(model).__name__}, not a torch.nn.Module")
        return model
    try:
        return create_model(section.name, num_classes, **_kwargs(section))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what}={section.name}: {str(exc).splitlines()[0]}") from exc


def weights_come_with_model(section: DictConfig) -> bool:
    """True when a teacher's weights are loaded by its builder (``kwargs.pretrained``: timm's
    weights or a local file) and no ``checkpoint`` is given."""
    pretrained = _kwargs(section).get("pretrained")
    if isinstance(pretrained, str):  # from ${oc.env:...}: "true", "false" or a path
        pretrained = pretrained.strip().lower() not in ("", "false", "0", "none", "null")
    return not section.get("checkpoint") and bool(pretrained) and section.get("builder") is None


def task_options(cfg: DictConfig) -> dict[str, Any]:
    """Optional parts of the distillation task: ``mixup`` (a batch mixer, e.g. ``timm.data.Mixup``,
    applied to training batches) and ``loss.supervised`` (the loss on the labels, e.g.
    ``timm.loss.BinaryCrossEntropy``; default cross-entropy)."""
    options: dict[str, Any] = {}
    mixup = cfg.get("mixup")
    if mixup is not None:
        options["mixup"] = instantiate(mixup)
    supervised = cfg.loss.get("supervised")
    if supervised is not None:
        options["supervised_loss"] = instantiate(supervised)
    return options
