"""``create_model("timm/<name>")``: timm's own definition (the reference) behind our name, pretrained
weights from a local file and from timm's Hugging Face cache (offline), the teacher input adapter,
and ``register_model``. Small timm test models only (``test_vit``, ``test_resnet``), no network."""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import constants as hf_constants

from ikl.errors import CheckpointError
from ikl.models import _REGISTERED as REGISTERED
from ikl.models import InputAdapter, create_model, list_models, register_model

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name, kwargs", [("test_vit", {}), ("test_resnet", {"drop_path_rate": 0.05})])
def test_keys_and_logits_are_timms(name, kwargs):
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False, num_classes=7, **kwargs).eval()
    ours = create_model(f"timm/{name}", 7, **kwargs).eval()
    assert type(ours) is type(reference)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _images(64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
        assert ours(x).shape == (2, 7)


def test_unknown_timm_name_is_one_line():
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'") as info:
        create_model("timm/no_such_net", 10)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="or timm/<any timm model name>"):
        create_model("no_such_net", 10)


@pytest.fixture
def saved_vit(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()
    state = model.state_dict()
    pth = tmp_path / "vit.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pth)
    safe = tmp_path / "vit.safetensors"
    safetensors.torch.save_file(state, str(safe))
    return model, pth, safe


def test_pretrained_from_a_local_file(saved_vit):
    reference, pth, safe = saved_vit
    x = _images(160)
    for path in (pth, safe):  # a torch.save checkpoint (wrapped, DDP prefixes) and a safetensors file
        model = create_model("timm/test_vit", 10, pretrained=str(path)).eval()
        for key, value in reference.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_a_local_file_that_does_not_fit_is_one_line(saved_vit, tmp_path):
    _, pth, _ = saved_vit
    with pytest.raises(CheckpointError, match="timm could not load pretrained weights for test_vit from") as info:
        create_model("timm/test_vit", 5, pretrained=str(pth))  # 10-class head in the file
    assert "\n" not in str(info.value) and "pretrained_num_classes" in str(info.value)
    # a different head on purpose: timm re-initialises only the classifier
    model = create_model("timm/test_vit", 5, pretrained=str(pth), pretrained_num_classes=10)
    assert model.head.weight.shape[0] == 5
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("timm/test_vit", 10, pretrained=str(tmp_path / "missing.pth"))


def _hf_cache(root, repo: str, state: dict) -> None:
    """A Hugging Face hub cache holding ``model.safetensors`` of ``repo`` (the layout hf_hub_download writes)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    safetensors.torch.save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))


def test_pretrained_from_timms_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # no request may leave the machine
    torch.manual_seed(2)
    reference = timm.create_model("test_vit.r160_in1k", pretrained=False).eval()
    _hf_cache(tmp_path, "timm/test_vit.r160_in1k", reference.state_dict())
    model = create_model("timm/test_vit.r160_in1k", 1000, pretrained=True, cache_dir=tmp_path).eval()
    x = _images(160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="with no network, put the weights in the Hugging Face cache") as info:
        create_model("timm/test_vit.r160_in1k", 1000, pretrained=True, cache_dir=tmp_path / "empty")
    assert "\n" not in str(info.value) and "pretrained=<local file>" in str(info.value)


# ----------------------------------------------------------------------------- the input adapter
def test_the_adapter_feeds_the_teacher_its_own_normalisation_and_size():
    torch.manual_seed(3)
    plain = timm.create_model("test_vit", pretrained=False, num_classes=10).eval()  # 160 px, mean = std = 0.5
    teacher = create_model("timm/test_vit", 10, input_mean=IMAGENET[0], input_std=IMAGENET[1]).eval()
    teacher.load_state_dict(plain.state_dict(), strict=True)
    assert list(teacher.state_dict()) == list(plain.state_dict())  # the adapter adds no keys
    own = ((0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        at_160 = _images(160)  # same size: only the normalisation changes
        torch.testing.assert_close(teacher(_norm(at_160, *IMAGENET)), plain(_norm(at_160, *own)), rtol=1e-5, atol=1e-5)
        at_64 = _images(64)  # the student's 64 px batch, resized to 160 with the model's bicubic
        resized = F.interpolate(_norm(at_64, *own), size=(160, 160), mode="bicubic", align_corners=False)
        torch.testing.assert_close(teacher(_norm(at_64, *IMAGENET)), plain(resized), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(teacher(_norm(at_160, *IMAGENET)), plain(_norm(at_160, *IMAGENET)), atol=1e-3)
    clone = copy.deepcopy(teacher).double()  # the hook survives copies; buffers follow .to()
    assert clone.input_adapter.scale.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(clone(_norm(at_160, *IMAGENET).double()).float(), teacher(_norm(at_160, *IMAGENET)))


def test_adapter_is_the_identity_when_nothing_differs():
    adapter = InputAdapter(IMAGENET[0], IMAGENET[1], IMAGENET[0], IMAGENET[1], size=(32, 32))
    x = torch.randn(2, 3, 32, 32)
    assert adapter.identity and adapter(x) is x
    shrink = InputAdapter((0.0,) * 3, (1.0,) * 3, (0.0,) * 3, (1.0,) * 3, size=(8, 8), interpolation="bilinear")
    expected = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(shrink(x), expected)
    with pytest.raises(ValueError, match="positive"):
        InputAdapter((0.0,), (0.0,), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="input_mean and input_std"):
        create_model("timm/test_vit", 10, input_mean=IMAGENET[0])


# ----------------------------------------------------------------------------- register_model
def test_register_model_adds_a_name(monkeypatch):
    monkeypatch.setattr("ikl.models._REGISTERED", dict(REGISTERED))

    @register_model("tiny_linear")
    def tiny(num_classes: int, width: int = 4) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    assert "tiny_linear" in list_models()
    assert create_model("tiny_linear", 3)(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    register_model("tiny_linear", tiny)  # the same builder again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny_linear", lambda num_classes: torch.nn.Identity())
    with pytest.raises(ValueError, match="built-in model name"):
        register_model("resnet8", tiny)
    with pytest.raises(ValueError, match="built-in model name"):
        register_model("timm/mine", tiny)


@pytest.mark.slow
def test_a_timm_student_trains_and_its_checkpoint_rebuilds_by_name(tmp_path, one_thread):
    from ikl.cli import train_kd
    from ikl.engine.checkpoint import load_model_weights
    from tests.runutils import TINY_DIGITS, compose_config

    overrides = [*TINY_DIGITS, "loss=ce", "student=timm_resnet50", "student.name=timm/test_resnet"]
    overrides += ["+student.kwargs.drop_path_rate=0.05", "trainer.epochs=1", f"run_dir={tmp_path / 'run'}"]
    overrides += ["run_name=timm-student"]  # the default one would contain the '/' of timm/test_resnet
    summary = train_kd.run(compose_config("train_kd", overrides))
    assert summary["student"] == "timm/test_resnet" and summary["epochs"] == 1
    final = tmp_path / "run" / "checkpoints" / "final.pt"
    container = load_model_weights(create_model("timm/test_resnet", 10), final)  # strict: the same layout
    assert container["model_name"] == "timm/test_resnet"
