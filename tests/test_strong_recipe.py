"""The pieces of the strong (timm RSB A2 / VanillaKD) recipe and of the official schedules, each against
its reference: timm's own scheduler, optimizer factory and sampler, and the official formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.loss import BinaryCrossEntropy
from timm.optim import Lamb, create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import TensorDataset

from ikl.cli.models import build_model, task_options, weights_come_with_model
from ikl.data import DataError, Datasets, RepeatedAugmentationSampler, build_loaders, imagenet_transforms, set_epoch
from ikl.engine.optimizers import lamb
from ikl.engine.schedules import official_lt_cosine, trades_cosine, warmup_cosine
from ikl.errors import ConfigError
from ikl.losses import KDLoss
from ikl.tasks import DistillationTask
from tests.runutils import compose_config


def _lrs(scheduler, optimizer, epochs: int) -> list[float]:
    """The lr each epoch 1..epochs trains with (the Trainer steps the scheduler after every epoch)."""
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _sgd(lr: float = 0.2) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_trades_cosine_is_the_official_trades_formula():
    opt = _sgd(0.2)
    lrs = _lrs(trades_cosine(opt, epochs=200), opt, 200)
    expected = [0.2 * 0.5 * (1 + math.cos((e - 1) / 200 * math.pi)) for e in range(1, 201)]  # train_trades_cifar.py
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == 0.2  # the IKL-AT cosine starts lower: pi * 1/201


def test_official_lt_cosine_is_the_imagenet_lt_formula():
    opt = _sgd(0.05)
    lrs = _lrs(official_lt_cosine(opt, epochs=90, warmup_epochs=10), opt, 90)

    def official(epoch: int) -> float:  # imagenetlt_distill_dkl.py adjust_learning_rate, epoch 0-based
        if epoch < 10:
            return 0.05 / 10 * (epoch + 1)
        return 0.05 * 0.5 * (1.0 + math.cos(math.pi * (epoch - 10 + 1) / (90 - 10 + 1)))

    assert lrs == pytest.approx([official(e) for e in range(90)], rel=1e-12)


def test_warmup_cosine_is_timms_cosine_scheduler_per_epoch():
    model = torch.nn.Linear(3, 2)
    ours_opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 2.5e-3}], lr=5e-3)
    timm_opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 2.5e-3}], lr=5e-3)
    ours = warmup_cosine(ours_opt, epochs=30, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-6)
    reference = CosineLRScheduler(timm_opt, t_initial=30, lr_min=1e-6, warmup_t=5, warmup_lr_init=1e-6)
    for epoch in range(35):  # 5 past the end: timm holds lr_min
        assert [g["lr"] for g in ours_opt.param_groups] == pytest.approx(
            [g["lr"] for g in timm_opt.param_groups], rel=1e-10
        ), epoch
        ours_opt.step()
        ours.step()
        reference.step(epoch + 1)  # timm train.py: lr_scheduler.step(epoch + 1) after each epoch


def test_lamb_matches_timms_optimizer_factory_groups_and_steps():
    def net() -> torch.nn.Module:  # conv and linear weights decay; conv bias, BN and linear bias do not
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 5),
        )

    reference_model, model = net(), net()
    ours = lamb(model.parameters(), lr=5e-3, weight_decay=0.02)
    reference = create_optimizer_v2(reference_model, opt="lamb", lr=5e-3, weight_decay=0.02)
    assert isinstance(ours, Lamb) and isinstance(reference, Lamb)
    by_decay = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in reference.param_groups}
    assert {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in ours.param_groups} == by_decay
    x = torch.randn(4, 3, 8, 8)
    for module, opt in ((model, ours), (reference_model, reference)):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(module(x), torch.arange(4)).backward()
            opt.step()
    for (name, a), b in zip(model.state_dict().items(), reference_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    every = lamb(model.parameters(), lr=1e-3, decay_1d=True)
    assert len(every.param_groups) == 1 and every.param_groups[0]["weight_decay"] == 0.02
    # parameter groups (a task's optimizer_param_groups) keep their own decay; 1-d tensors still get none
    conv, bn, linear = model[0], model[1], model[5]
    given = [
        {"params": [conv.weight, conv.bias, linear.weight]},
        {"params": list(bn.parameters()), "weight_decay": 0.0},
    ]
    grouped = {(g["weight_decay"], sum(p.numel() for p in g["params"])) for g in lamb(given, lr=1e-3).param_groups}
    assert grouped == {(0.0, 8), (0.02, 8 * 3 * 9 + 5 * 8), (0.0, 16)}


@pytest.mark.parametrize("n, world_size, repeats", [(1000, 1, 3), (1000, 4, 3), (100, 2, 3), (37, 3, 2)])
def test_repeated_augmentation_sampler_equals_timms(n, world_size, repeats):
    for rank in range(world_size):
        ours = RepeatedAugmentationSampler(n, repeats=repeats, seed=0, rank=rank, world_size=world_size)
        reference = RepeatAugSampler(range(n), num_replicas=world_size, rank=rank, num_repeats=repeats)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            assert list(ours) == list(reference) and len(ours) == len(reference)
    one = RepeatedAugmentationSampler(n, repeats=repeats, seed=5)
    one.set_epoch(1)
    order = list(one)
    assert order[:repeats] == [order[0]] * repeats  # one process: the copies share a batch
    with pytest.raises(ValueError, match="positive whole number"):
        RepeatedAugmentationSampler(10, repeats=0)


def test_build_loaders_with_aug_repeats_and_drop_last_replays_per_epoch():
    data = TensorDataset(torch.arange(300).float(), torch.zeros(300, dtype=torch.long))
    bundle = Datasets(data, data, 1, (0.0,), (1.0,), False)
    train, _ = build_loaders(bundle, batch_size=64, seed=7, aug_repeats=3, drop_last=True)
    assert isinstance(train.sampler, RepeatedAugmentationSampler)
    set_epoch(train, 2)
    first = [b[0].tolist() for b in train]
    set_epoch(train, 2)
    assert [b[0].tolist() for b in train] == first  # resumable: the epoch fixes the order
    assert len(first) == 256 // 64 and all(len(b) == 64 for b in first)  # 300 // 256 * 256 images, whole batches
    plain, _ = build_loaders(bundle, batch_size=64, seed=7, drop_last=True)
    assert len(plain) == 4 and not isinstance(plain.sampler, RepeatedAugmentationSampler)


def test_timm_transforms_and_a_bad_option_is_one_line():
    from PIL import Image

    train, test = imagenet_transforms(
        32,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        True,
        augment="timm",
        timm_train=OmegaConf.create({"auto_augment": "rand-m7-mstd0.5", "interpolation": "random", "scale": [0.5, 1]}),
        timm_test={"crop_pct": 0.95, "interpolation": "bicubic"},
    )
    image = Image.new("RGB", (50, 40), (120, 30, 200))
    assert train(image).shape == (3, 32, 32) and test(image).shape == (3, 32, 32)
    assert "RandAugment" in repr(train) and "Resize(size=33" in repr(test)  # int(32 / 0.95)
    with pytest.raises(DataError, match="dataset.builder.timm_train is not valid") as info:
        imagenet_transforms(32, (0.5,) * 3, (0.5,) * 3, True, augment="timm", timm_train={"no_such_option": 1})
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="apply to augment=timm only"):
        imagenet_transforms(32, (0.5,) * 3, (0.5,) * 3, True, timm_train={"auto_augment": "rand-m9"})


# ----------------------------------------------------------------------------- the task with mixup
def test_mixup_and_bce_reach_the_task_and_the_criterion_gets_the_dominant_label(monkeypatch):
    torch.manual_seed(0)
    student, teacher = torch.nn.Linear(12, 4), torch.nn.Linear(12, 4)
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0)
    seen = {}

    class Spy(KDLoss):
        def forward(self, s, t, labels):
            seen["labels"] = labels
            return super().forward(s, t, labels)

    task = DistillationTask(
        student,
        teacher,
        Spy(kd_weight=1.0, temperature=1.0),
        mixup=mixup,
        supervised_loss=BinaryCrossEntropy(smoothing=0.0),
    )
    assert task.graph_safe is False and DistillationTask.graph_safe is True  # host-side mixing: no CUDA graph
    x, y = torch.randn(6, 1, 3, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    x_flat = x.flatten(1)
    monkeypatch.setattr(task, "model", torch.nn.Sequential(torch.nn.Flatten(), student))
    task.teacher = torch.nn.Sequential(torch.nn.Flatten(), teacher).eval()
    np_state = __import__("numpy").random.get_state()
    out = task(x.clone(), y, epoch=1)
    __import__("numpy").random.set_state(np_state)  # replay the same mixing coefficient
    x_mixed, target = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0)(x.clone(), y)
    logits = student(x_mixed.flatten(1))
    torch.testing.assert_close(out["loss_ce"], F.binary_cross_entropy_with_logits(logits, target))
    assert torch.equal(seen["labels"], target.argmax(1))
    assert not torch.allclose(x_mixed.flatten(1), x_flat)  # the batch really was mixed
    task.eval()
    plain = task(x.clone(), y, epoch=1)  # evaluation: no mixing, BCE on one-hot labels
    torch.testing.assert_close(plain["logits"], student(x_flat))
    torch.testing.assert_close(
        plain["loss_ce"], F.binary_cross_entropy_with_logits(student(x_flat), F.one_hot(y, 4).float())
    )


# ----------------------------------------------------------------------------- model sections of the configs
def test_build_model_from_a_target_or_a_name():
    section = OmegaConf.create({"name": "mine", "builder": {"_target_": "timm.create_model", "model_name": "test_vit"}})
    assert build_model(section, 5).num_classes == 5
    section = OmegaConf.create({"name": "timm/test_resnet", "kwargs": {"drop_path_rate": 0.05}})
    assert type(build_model(section, 5)).__name__ == "ResNet"
    with pytest.raises(ConfigError, match="student=nope: unknown model 'nope'") as info:
        build_model(OmegaConf.create({"name": "nope"}), 5, "student")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="student=resnet8: .*unexpected keyword argument 'width'"):
        build_model(OmegaConf.create({"name": "resnet8", "kwargs": {"width": 2}}), 5, "student")
    with pytest.raises(ConfigError, match=r"teacher.builder \(torch.nn.Linear\) failed"):
        build_model(OmegaConf.create({"name": "x", "builder": {"_target_": "torch.nn.Linear"}}), 5, "teacher")
    with pytest.raises(ConfigError, match="returned a .*, not a torch.nn.Module"):
        build_model(OmegaConf.create({"name": "x", "builder": {"_target_": "math.floor", "_partial_": True}}), 5)


def test_weights_come_with_a_pretrained_teacher_only_without_a_checkpoint():
    cfg = compose_config("train_kd", ["teacher=timm_beit_large", "dataset=imagenet"])
    assert weights_come_with_model(cfg.teacher)
    assert list(cfg.teacher.kwargs.input_std) == [0.229, 0.224, 0.225]  # the student's normalisation
    for off in ("false", "False", "", False):  # e.g. IKL_BEIT_WEIGHTS=false: no weights come with it
        cfg.teacher.kwargs.pretrained = off
        assert not weights_come_with_model(cfg.teacher)
    cfg.teacher.kwargs.pretrained = "/weights/beit.safetensors"
    assert weights_come_with_model(cfg.teacher)
    cfg.teacher.checkpoint = "somewhere.pt"
    assert not weights_come_with_model(cfg.teacher)
    assert not weights_come_with_model(compose_config("train_kd", []).teacher)


def test_task_options_from_the_strong_recipe():
    cfg = compose_config("train_kd", ["experiment=kd_strong/kd_beitl_res50"])
    options = task_options(cfg)
    assert isinstance(options["mixup"], Mixup) and options["mixup"].mixup_alpha == 0.1
    assert isinstance(options["supervised_loss"], BinaryCrossEntropy)
    assert task_options(compose_config("train_kd", [])) == {}
