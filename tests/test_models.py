"""Tests for ``ikl.models``: the factory contract, checkpoint-key parity with the reference zoos
(golden files in ``tests/fixtures/model_keys``, dumped once from the reference model files), the
``normalize`` option of the adversarial-training models, and the DM WideResNet's logits against the
reference definition (``tests/fixtures/dm_wide_resnet_logits.json``)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
import torchvision

from ikl.models import AT_MODELS, CIFAR_KD_MODELS, IMAGENET_MODELS, create_model, list_models
from ikl.models.dm_wide_resnet import DMWideResNet
from ikl.models.wide_resnet import WideResNet

FIXTURES = Path(__file__).parent / "fixtures" / "model_keys"
TORCHVISION_RESNETS = ("imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50")
WITH_FIXTURE = [n for n in list_models() if n not in TORCHVISION_RESNETS]
# forwards that take several seconds on 2 CPU cores
HEAVY = {"wrn_34_20", "wrn_34_20_swish", "wrn_70_16_swish", "imagenet_resnext101_32x4d"}
SWISH = ("wrn_28_10_swish", "wrn_34_10_swish", "wrn_34_20_swish", "wrn_70_16_swish")

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
    assert set(AT_MODELS) == {"wrn_34_10", "wrn_28_10", "wrn_34_20", "preact_resnet18", "resnet18", *SWISH}
    assert set(IMAGENET_MODELS) == {*TORCHVISION_RESNETS, "imagenet_mobilenet_v1", "imagenet_resnext101_32x4d"}
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


@pytest.mark.parametrize("name", _params(WITH_FIXTURE))
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
    "wrn_28_10_swish": 36_536_884,
    "wrn_34_10_swish": 46_218_164,
    "wrn_34_20_swish": 184_646_964,
    "wrn_70_16_swish": 266_888_756,
    "imagenet_resnext101_32x4d": 42_149_194,  # 10 classes (44_177_704 with 1000)
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


@pytest.mark.parametrize("name", [n for n in AT_MODELS if n not in SWISH])
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


# ---------------------------------------------------------------- the DM WideResNet (SiLU)
DM_LOGITS = Path(__file__).parent / "fixtures" / "dm_wide_resnet_logits.json"


def seeded_dm_state(items: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Deterministic float64 values for a state_dict with these (key, shape) entries, in this order:
    He-scaled conv/linear weights, BN weights near 1, small biases and means, variances in [0.5, 1.5).

    The fixture ``dm_wide_resnet_logits.json`` was made once, outside this repository, by loading
    these values (this function, copied into the generating script) strictly into the reference
    ``wideresnetwithswish('wrn-{depth}-{width}-swish', dataset, num_classes)`` of ``jiequancui/DKL``
    (c5e8ad2) ``DKLv1/Adv-training-dkl/auto_attacks/models/wideresnetwithswish.py`` (byte-identical to
    ``wzekai99/DM-Improves-AT`` b390f25 ``core/models/wideresnetwithswish.py``) in float64 and recording
    its eval-mode logits, its train-mode logits and one BN's running statistics after that train-mode
    forward, for the input ``torch.rand(4, 3, 32, 32, generator=manual_seed(1), dtype=float64)``.
    The key fixtures ``model_keys/wrn_*_swish.json`` were dumped from the same file at full size and
    checked to equal RobustBench's ``DMWideResNet`` (78fcc9e) keys and shapes.
    """
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for key, shape in items:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7, dtype=torch.long)
            continue
        if key.endswith("running_var"):
            t = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif key.endswith("running_mean"):
            t = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g, dtype=torch.float64) * math.sqrt(2.0 / fan_in)
        elif len(shape) == 2:
            t = torch.randn(shape, generator=g, dtype=torch.float64) * math.sqrt(1.0 / shape[1])
        elif key.endswith("weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        else:
            t = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
        out[key] = t
    return out


def _dm_cases() -> list[dict]:
    assert DM_LOGITS.is_file(), f"missing golden file {DM_LOGITS}"
    return json.loads(DM_LOGITS.read_text())["cases"]


@pytest.mark.parametrize("case", _dm_cases(), ids=lambda c: f"wrn_{c['depth']}_{c['width']}_{c['dataset']}")
def test_dm_wide_resnet_matches_reference_logits(case):
    """A seeded small instance loads the reference layout strictly and gives the reference's logits in
    eval mode and train mode, and updates BN running statistics with momentum 0.01."""
    model = DMWideResNet(case["depth"], case["width"], case["num_classes"], normalize=case["dataset"]).double()
    assert list(model.state_dict()) == case["keys"]
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_dm_state(shapes), strict=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        eval_logits = model.eval()(x)
        train_logits = model.train()(x)
    torch.testing.assert_close(eval_logits, torch.tensor(case["eval_logits"], dtype=torch.float64), rtol=0, atol=1e-9)
    torch.testing.assert_close(train_logits, torch.tensor(case["train_logits"], dtype=torch.float64), rtol=0, atol=1e-9)
    state = model.state_dict()
    for record in ("running_mean_after_train_forward", "running_var_after_train_forward"):
        ref = case[record]
        torch.testing.assert_close(
            state[ref["key"]], torch.tensor(ref["value"], dtype=torch.float64), rtol=0, atol=1e-12
        )


def test_dm_wide_resnet_float32_load_gives_float64_reference_logits():
    """The published checkpoints are float32: the same weights cast to float32 stay within float32
    rounding of the reference logits (the model and its statistics work in the input's dtype)."""
    case = _dm_cases()[0]
    model = DMWideResNet(case["depth"], case["width"], case["num_classes"], normalize=case["dataset"])
    shapes = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    state = {k: v.float() if v.is_floating_point() else v for k, v in seeded_dm_state(shapes).items()}
    model.load_state_dict(state, strict=True)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        logits = model.eval()(x.float())
    torch.testing.assert_close(
        logits.double(), torch.tensor(case["eval_logits"], dtype=torch.float64), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize(
    ("num_classes", "normalize", "mean", "std"),
    [
        (100, None, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        (10, None, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
        (10, "cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        (7, ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    ],
)
def test_dm_wide_resnet_normalises_inside_with_the_reference_statistics(num_classes, normalize, mean, std):
    model = create_model("wrn_28_10_swish", num_classes, normalize=normalize)
    torch.testing.assert_close(model.input_norm.mean.flatten(), torch.tensor(mean))
    torch.testing.assert_close(model.input_norm.std.flatten(), torch.tensor(std))
    assert not any(k.startswith("input_norm") for k in model.state_dict()), "statistics are not checkpoint keys"


def test_dm_wide_resnet_needs_a_normalisation_choice_for_other_class_counts():
    with pytest.raises(ValueError) as info:
        create_model("wrn_28_10_swish", 7)
    assert "\n" not in str(info.value) and "normalize='cifar10'" in str(info.value)
    with pytest.raises(ValueError, match="not one of"):
        create_model("wrn_28_10_swish", 10, normalize="svhn")


def test_dm_wide_resnet_bn_momentum_and_silu():
    model = _on_meta("wrn_28_10_swish", 10)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 25 and all(m.momentum == 0.01 for m in bns)
    assert any(isinstance(m, torch.nn.SiLU) for m in model.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())


# ----------------------------------------------------------------------------- logits vs the reference files
def rule_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic float64 weights from each key's name alone (so any two models with the same
    keys and shapes get the same values): conv/linear weights N(0, 1/fan_in), norm weights
    1 + 0.1 N, biases and running means 0.1 N, running variances 1 + 0.1 U; counters as they are."""
    out = {}
    for key, value in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if not value.is_floating_point():
            out[key] = value.clone()
        elif key.endswith("running_var"):
            out[key] = 1 + 0.1 * torch.rand(value.shape, generator=g, dtype=torch.float64)
        elif value.ndim > 1:
            fan_in = value[0].numel()
            out[key] = torch.randn(value.shape, generator=g, dtype=torch.float64) / fan_in**0.5
        elif key.endswith("weight"):
            out[key] = 1 + 0.1 * torch.randn(value.shape, generator=g, dtype=torch.float64)
        else:
            out[key] = 0.1 * torch.randn(value.shape, generator=g, dtype=torch.float64)
    return out


def rule_input(size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.slow  # ~5 s on 2 CPU cores (44M float64 weights)
def test_resnext101_32x4d_logits_match_the_official_definition():
    """The fixture's ``logits`` are those of the official ImageNet-LT teacher definition
    (jiequancui/DKL c5e8ad2 ``DKLv1/Imbalanced_KD-dkl/models/resnet_imagenet.py`` ``resnext101_32x4d(
    num_classes=10)``, float64, eval mode) under :func:`rule_state_dict` weights on :func:`rule_input`,
    computed once with that file outside the repository; its keys, shapes and parameter count are in
    the same file (checked by the tests above)."""
    ref = _fixture("imagenet_resnext101_32x4d")
    model = create_model("imagenet_resnext101_32x4d", ref["num_classes"]).double().eval()
    model.load_state_dict(rule_state_dict(model), strict=True)
    with torch.no_grad():
        logits = model(rule_input())
    torch.testing.assert_close(logits, torch.tensor(ref["logits"], dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_resnext101_32x4d_is_grouped_as_resnext_and_loads_the_official_checkpoint_layout():
    model = _on_meta("imagenet_resnext101_32x4d", 1000)
    conv = dict(model.named_modules())["layer3.22.conv2"]
    assert (conv.groups, conv.in_channels, conv.out_channels) == (32, 512, 512)
    assert sum(p.numel() for p in model.parameters()) == 44_177_704  # ResNeXt-101 32x4d, 1000 classes
    # the official DDP(DDAModel(...)) checkpoint layout: state_dict["module.encoder.<key>"]
    from ikl.engine.checkpoint import extract_state_dict

    state = {f"module.encoder.{k}": v for k, v in create_model("imagenet_resnext101_32x4d", 10).state_dict().items()}
    found = extract_state_dict({"state_dict": state, "epoch": 90})
    assert next(iter(found)).startswith("encoder.")  # "module." goes; "encoder." is DDAModel's own prefix
    stripped = {k.removeprefix("encoder."): v for k, v in found.items()}
    create_model("imagenet_resnext101_32x4d", 10).load_state_dict(stripped, strict=True)
