"""Model zoo: architectures only; every ``forward(x)`` returns a logits tensor.

``create_model(name, num_classes, **kwargs)`` is the one name-to-model factory of the library
(timm style): the names are part of the published checkpoints' identity.

* CIFAR KD zoo (32 x 32; names as in mdistiller's ``cifar_model_dict``, which also has
  ``ResNet18``): same modules and ``state_dict`` keys as ``megvii-research/mdistiller``
  ``mdistiller/models/cifar/*``, so the CIFAR-100 teachers in ``ckpt["model"]`` load with
  ``strict=True``. Inputs are normalised by the data transform, not the model.
* Adversarial training (32 x 32, inputs in [0, 1]): ``wrn_34_10``, ``wrn_28_10``, ``wrn_34_20``
  (TRADES/AWP WideResNet), ``resnet18`` (TRADES/AWP ResNet-18), ``preact_resnet18`` (AWP). They take
  ``normalize=(mean, std)`` (default ``None``); its buffers are not saved, so keys never change.
* Generated-data adversarial training (32 x 32, inputs in [0, 1], standardised inside the model):
  ``wrn_28_10_swish``, ``wrn_34_10_swish``, ``wrn_34_20_swish``, ``wrn_70_16_swish``, the
  DeepMind/DM-AT WideResNet with SiLU (RobustBench ``DMWideResNet``; the DKL 20M/50M checkpoints and
  RobustBench's ``Cui2023Decoupled_WRN-28-10`` are ``wrn_28_10_swish``). ``normalize`` is
  ``"cifar10"``, ``"cifar100"``, ``(mean, std)`` or ``None`` (by class count, as the reference).
* ImageNet (224 x 224): torchvision ResNet-18/34/50, mdistiller's MobileNetV1 and the ImageNet-LT
  teacher ResNeXt-101 32x4d (torchvision layout).
* ``timm/<name>``: any ``timm`` model (``ikl.models.timm_models``), with ``pretrained`` weights
  from timm's cache, the hub or a local file and an optional input adapter for teachers.
* Your own: :func:`register_model` adds a name (docs/custom.md).

Each module's docstring names its source file and commit and lists every deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from ikl.models.cifar_resnet import cifar_resnet
from ikl.models.dm_wide_resnet import DMWideResNet
from ikl.models.imagenet import MobileNetV1, imagenet_resnet, imagenet_resnext101_32x4d
from ikl.models.mobilenetv2 import mobilenetv2_half
from ikl.models.preact_resnet import PreActResNet18
from ikl.models.resnet import resnet18_at, resnet18_cifar, resnet50_cifar
from ikl.models.shufflenet import ShuffleNetV1, ShuffleNetV2
from ikl.models.timm_models import TIMM_PREFIX, InputAdapter, timm_model
from ikl.models.vgg import vgg
from ikl.models.wide_resnet import WideResNet

__all__ = [
    "AT_MODELS",
    "CIFAR_KD_MODELS",
    "IMAGENET_MODELS",
    "InputAdapter",
    "create_model",
    "list_models",
    "register_model",
    "timm_model",
]

_CIFAR_KD: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": partial(cifar_resnet, d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": partial(cifar_resnet, 8, wide=True),
    "resnet32x4": partial(cifar_resnet, 32, wide=True),
    "ResNet18": resnet18_cifar,
    "ResNet50": resnet50_cifar,
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{name: partial(vgg, name) for name in ("vgg8", "vgg11", "vgg13", "vgg16", "vgg19")},
    "MobileNetV2": mobilenetv2_half,
    "ShuffleV1": ShuffleNetV1,
    "ShuffleV2": ShuffleNetV2,
}
_AT: dict[str, Callable[..., nn.Module]] = {
    **{f"wrn_{d}_{k}": partial(WideResNet, d, k) for d, k in ((34, 10), (28, 10), (34, 20))},
    "preact_resnet18": PreActResNet18,
    "resnet18": resnet18_at,
    **{f"wrn_{d}_{k}_swish": partial(DMWideResNet, d, k) for d, k in ((28, 10), (34, 10), (34, 20), (70, 16))},
}
_IMAGENET: dict[str, Callable[..., nn.Module]] = {
    **{f"imagenet_resnet{d}": partial(imagenet_resnet, d) for d in (18, 34, 50)},
    "imagenet_mobilenet_v1": MobileNetV1,
    "imagenet_resnext101_32x4d": imagenet_resnext101_32x4d,
}
_MODELS: dict[str, Callable[..., nn.Module]] = {**_CIFAR_KD, **_AT, **_IMAGENET}
_REGISTERED: dict[str, Callable[..., nn.Module]] = {}  # register_model()

CIFAR_KD_MODELS: tuple[str, ...] = tuple(_CIFAR_KD)
AT_MODELS: tuple[str, ...] = tuple(_AT)
IMAGENET_MODELS: tuple[str, ...] = tuple(_IMAGENET)


def list_models() -> list[str]:
    """All names accepted by :func:`create_model`: CIFAR KD zoo, then AT, then ImageNet, then the
    registered ones (``timm/<name>`` is accepted too, for every model timm knows)."""
    return [*_MODELS, *_REGISTERED]


def register_model(
    name: str, builder: Callable[..., nn.Module] | None = None, *, overwrite: bool = False
) -> Callable[..., nn.Module]:
    """Make ``create_model(name, num_classes, **kwargs)`` call ``builder(num_classes=..., **kwargs)``.

    Usable as a decorator (``@register_model("my_net")``). ``builder`` must return a module whose
    ``forward(x)`` returns the logits. Zoo names and ``timm/`` are reserved; an existing
    registration is replaced only with ``overwrite=True``.
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS or name.startswith(TIMM_PREFIX):
            raise ValueError(f"{name!r} is a built-in model name; register yours under another name")
        if name in _REGISTERED and not overwrite and _REGISTERED[name] is not fn:
            raise ValueError(f"model {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTERED[name] = fn
        return fn

    return add(builder) if builder is not None else add


def create_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs; ``kwargs`` go to its constructor.

    AT models accept ``normalize=(mean, std)``; the TRADES WideResNets also ``drop_rate``; the
    ``*_swish`` models ``normalize="cifar10"|"cifar100"|(mean, std)|None`` and ``activation``.
    ``timm/<name>`` builds ``timm_model(name, num_classes, **kwargs)`` (``pretrained``,
    ``input_mean``/``input_std`` and timm's own options such as ``drop_path_rate``). Raises
    ``ValueError`` for an unknown name.
    """
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX) :], num_classes, **kwargs)
    builder = _MODELS.get(name) or _REGISTERED.get(name)
    if builder is None:
        raise ValueError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}, or timm/<any timm model name>"
        )
    return builder(num_classes=num_classes, **kwargs)
