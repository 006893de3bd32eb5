"""Tests for ``ikl.models``: the factory contract, checkpoint-key parity with the reference zoos
(golden files in ``tests/fixtures/model_keys``, dumped once from the reference model files), and
the ``normalize`` option of the adversarial-training models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from ikl.models import AT_MODELS, CIFAR_KD_MODELS, IMAGENET_MODELS, create_model, list_models
from ikl.models.wide_resnet import WideResNet

FIXTURES = Path(__file__).parent / "fixtures" / "model_keys"
TORCHVISION_RESNETS = ("imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50")
WITH_FIXTURE = [n for n in list_models() if n not in TORCHVISION_RESNETS]
# forwards that take several seconds on 2 CPU cores
HEAVY = {"wrn_34_20"}

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _params(names: list[str] | tuple[str, ...]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _fixture(name: str) -> dict:
    path = FIXTURES / f"{name}.json"
    assert path.is_file(), f"missing golden file {path}"
    return json.loads(path.read_text())


def _on_meta(name: str, num_classes: int, **kwargs: object) -> torch.nn.Module:
    """Build without allocating or initialising weights: enough for keys, shapes and counts."""
    with torch.device("meta"):
        return create_model(name, num_classes, **kwargs)


def _shapes(model: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = 224 if name in IMAGENET_MODELS else 32
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_list_models_is_the_zoo():
    expected_kd = [
        *("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"),
        *("resnet8x4", "resnet32x4", "ResNet18", "ResNet50"),
        *("wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"),
        *("MobileNetV2", "ShuffleV1", "ShuffleV2"),
    ]
    assert list(CIFAR_KD_MODELS) == expected_kd
    assert set(AT_MODELS) == {"wrn_34_10", "wrn_28_10", "wrn_34_20", "preact_resnet18", "resnet18"}
    assert set(IMAGENET_MODELS) == {*TORCHVISION_RESNETS, "imagenet_mobilenet_v1"}
    assert list_models() == [*CIFAR_KD_MODELS, *AT_MODELS, *IMAGENET_MODELS]


@pytest.mark.parametrize("name", _params(list_models()))
def test_forward_returns_logits_only(name):
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(_input(name))
    assert type(out) is torch.Tensor
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_state_dict_keys_and_shapes_match_reference(name):
    ref = _fixture(name)
    model = _on_meta(name, ref["num_classes"])
    assert _shapes(model) == [(k, v) for k, v in ref["state_dict"].items()]
    params = {k for k, _ in model.named_parameters()}
    assert [k for k in model.state_dict() if k not in params] == ref["buffers"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_reference_shaped_state_dict_loads_strictly(name):
    ref = _fixture(name)
    # a distinct constant per entry, so a value landing under the wrong key would show
    state = {
        k: torch.full(s, i, dtype=torch.long if k in ref["buffers"] and not s else torch.float32)
        for i, (k, s) in enumerate(ref["state_dict"].items())
    }
    model = _on_meta(name, ref["num_classes"]).to_empty(device="cpu")  # real, uninitialised
    model.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# Parameter counts measured from the reference implementations (num_classes 100, ImageNet 1000).
REFERENCE_PARAM_COUNTS = {
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "ResNet50": 23_705_252,
    "wrn_40_2": 2_255_156,
    "vgg13": 9_462_180,
    "MobileNetV2": 812_836,
    "ShuffleV1": 949_258,
    "ShuffleV2": 1_355_528,
    "wrn_34_10": 46_218_164,
    "wrn_34_20": 184_646_964,
    "preact_resnet18": 11_218_340,
    "resnet18": 11_220_132,
    "imagenet_mobilenet_v1": 4_231_976,
}


@pytest.mark.parametrize("name", REFERENCE_PARAM_COUNTS)
def test_parameter_counts(name):
    ref = _fixture(name)
    assert ref["num_params"] == REFERENCE_PARAM_COUNTS[name]
    model = _on_meta(name, ref["num_classes"])
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAM_COUNTS[name]


@pytest.mark.parametrize("name", TORCHVISION_RESNETS)
def test_torchvision_resnet_state_dict_loads_strictly(name):
    builder = getattr(torchvision.models, name.removeprefix("imagenet_"))
    state = builder(weights=None).state_dict()
    model = create_model(name, num_classes=1000)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])


def test_unknown_name_raises_one_line_listing_valid_names():
    with pytest.raises(ValueError) as info:
        create_model("resnet9", num_classes=10)
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet9'" in message
    for name in list_models():
        assert name in message


def test_construction_prints_nothing(capsys):
    create_model("MobileNetV2", num_classes=100)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name", AT_MODELS)
def test_normalize_keeps_state_dict_keys(name):
    plain = _on_meta(name, 100)
    normed = _on_meta(name, 100, normalize=(CIFAR100_MEAN, CIFAR100_STD))
    assert _shapes(normed) == _shapes(plain)
    extra = {k for k, _ in normed.named_buffers()} - {k for k, _ in plain.named_buffers()}
    assert extra == {"input_norm.mean", "input_norm.std"}


def _small_wrn(**kwargs: object) -> torch.nn.Module:
    return WideResNet(depth=10, widen_factor=1, num_classes=10, **kwargs)


NORMALIZE_BUILDERS = {
    "preact_resnet18": lambda **kw: create_model("preact_resnet18", 10, **kw),
    "resnet18": lambda **kw: create_model("resnet18", 10, **kw),
    "wide_resnet": _small_wrn,  # the class behind wrn_34_10 / wrn_28_10 / wrn_34_20
}


@pytest.mark.parametrize("kind", NORMALIZE_BUILDERS)
def test_normalize_standardises_inputs_inside_the_model(kind):
    build = NORMALIZE_BUILDERS[kind]
    torch.manual_seed(0)
    plain = build().eval()
    normed = build(normalize=(CIFAR100_MEAN, CIFAR100_STD)).eval()
    identity = build(normalize=(0.0, 1.0)).eval()
    for model in (normed, identity):
        model.load_state_dict(plain.state_dict(), strict=True)
    x = _input("cifar")
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = plain((x - mean) / std)
        torch.testing.assert_close(normed(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(identity(x), plain(x))
        assert not torch.allclose(normed(x), plain(x))
    assert normed.double().input_norm.mean.dtype == torch.float64  # buffers follow .to()


def test_normalize_rejects_bad_values():
    with pytest.raises(ValueError, match="std must be positive"):
        create_model("resnet18", 10, normalize=(CIFAR100_MEAN, (0.2, 0.0, 0.2)))
    with pytest.raises(ValueError, match="mean, std"):
        create_model("preact_resnet18", 10, normalize=(0.5,))
