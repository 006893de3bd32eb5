"""ClassPrior: hand-computed rows, unseen classes, state_dict, and all-reduce over two processes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ikl.errors import ConfigError
from ikl.losses import ClassPrior, IKLLoss
from ikl.losses.prior import prior_memory_bytes


def test_uniform_before_first_step_and_hand_computed_after():
    prior = ClassPrior(3, temperature=2.0)
    torch.testing.assert_close(prior.weights(torch.tensor([2])), torch.full((1, 3), 1 / 3))
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 4.0, 0.0], [4.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 2])
    prior.update(logits[:2], labels[:2])
    prior.update(logits[2:], labels[2:])
    prior.step()
    soft = torch.softmax(logits / 2.0, 1)
    expected = torch.stack([(soft[0] + soft[2]) / 2, soft[1], soft[3]])
    torch.testing.assert_close(prior.prior, expected)
    torch.testing.assert_close(prior.weights(torch.tensor([1, 0])), expected[[1, 0]])
    assert prior.counts.sum() == 0 and prior.sums.abs().sum() == 0


def test_unseen_class_keeps_previous_row_and_nothing_is_nan():
    prior = ClassPrior(4)
    prior.update(torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 1]))
    prior.step()
    assert torch.isfinite(prior.prior).all()
    torch.testing.assert_close(prior.prior[2:], torch.full((2, 4), 0.25))
    first_rows = prior.prior[:2].clone()
    prior.update(torch.randn(2, 4), torch.tensor([3, 3]))
    prior.step()
    torch.testing.assert_close(prior.prior[:2], first_rows)
    assert not torch.allclose(prior.prior[3], torch.full((4,), 0.25))


def test_momentum_blends_rows():
    prior = ClassPrior(2, momentum=0.25)
    prior.update(torch.tensor([[10.0, -10.0]]), torch.tensor([0]))
    prior.step()
    new_row = torch.softmax(torch.tensor([10.0, -10.0]), 0)
    torch.testing.assert_close(prior.prior[0], 0.25 * new_row + 0.75 * torch.tensor([0.5, 0.5]))


def test_state_dict_round_trip_includes_accumulator():
    prior = ClassPrior(5, temperature=4.0)
    prior.update(torch.randn(20, 5), torch.randint(0, 5, (20,)))
    prior.step()
    prior.update(torch.randn(7, 5), torch.randint(0, 5, (7,)))
    state = prior.state_dict()
    assert set(state) == {"prior", "sums", "counts"}
    restored = ClassPrior(5, temperature=4.0)
    restored.load_state_dict(state)
    for name in state:
        torch.testing.assert_close(getattr(restored, name), getattr(prior, name))
    restored.step()
    prior.step()
    torch.testing.assert_close(restored.prior, prior.prior)


@pytest.mark.parametrize(
    "bad", [dict(num_classes=0), dict(num_classes=3, temperature=0.0), dict(num_classes=3, momentum=0.0)]
)
def test_invalid_arguments_are_refused(bad):
    num_classes = bad.pop("num_classes")
    with pytest.raises(ValueError):
        ClassPrior(num_classes, **bad)


def _data():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(40, 6, generator=gen) * 3, torch.randint(0, 5, (40,), generator=gen)


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        logits, labels = _data()
        prior = ClassPrior(6, temperature=2.0)
        prior.update(logits[rank::world_size], labels[rank::world_size])
        prior.step()
        torch.save(prior.prior, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_prior_equals_single_process_union(tmp_path, free_port):
    mp.spawn(_worker, args=(2, free_port, str(tmp_path / "prior")), nprocs=2, join=True)
    logits, labels = _data()
    single = ClassPrior(6, temperature=2.0)
    single.update(logits, labels)
    single.step()
    for rank in range(2):
        torch.testing.assert_close(torch.load(tmp_path / f"prior.{rank}", weights_only=True), single.prior)
    assert torch.allclose(single.prior[5], torch.full((6,), 1 / 6)), "class 5 is never seen and keeps uniform"


# ---------------------------------------------------------------- memory: lazy, refused, absent


def test_gi_off_has_no_prior_at_all():
    """class_wise=False: no ClassPrior, no buffer, nothing in state_dict; observe/end_epoch do nothing.
    C = 10⁵ would need 120 GB of prior state; GI off it costs nothing."""
    loss = IKLLoss(num_classes=100_000, class_wise=False, wmse_weight=8.0, temperature=4.0, prior_temperature=100.0)
    assert loss.prior is None and list(loss.buffers()) == [] and loss.state_dict() == {}
    student = torch.randn(3, 100_000, requires_grad=True)
    teacher, labels = torch.randn(3, 100_000), torch.tensor([0, 5, 99_999])
    sum(loss(student, teacher, labels).values()).backward()
    loss.observe(teacher, labels)
    loss.end_epoch()
    assert list(loss.buffers()) == [] and loss.state_dict() == {}


def test_distillation_task_with_gi_off_allocates_no_prior():
    from torch import nn

    from ikl.tasks import DistillationTask

    loss = IKLLoss(num_classes=7, class_wise=False)
    task = DistillationTask(nn.Linear(4, 7), nn.Linear(4, 7), loss).train()
    task(torch.randn(5, 4), torch.arange(5), epoch=1)["loss"].backward()
    task.on_epoch_end(1)
    assert "criterion" in task.checkpoint_state() and task.checkpoint_state()["criterion"] == {}
    assert not any(t.shape == (7, 7) for t in task.state_dict().values())


def test_state_is_allocated_lazily():
    prior = ClassPrior(5, temperature=2.0)
    assert prior.table() is None and prior.state_dict() == {}
    torch.testing.assert_close(prior.weights(torch.tensor([1, 4])), torch.full((2, 5), 0.2))
    prior.step()  # nothing seen: nothing allocated, the prior stays uniform
    assert prior.state_dict() == {}
    prior.update(torch.randn(4, 5), torch.tensor([0, 1, 1, 3]))
    assert set(prior.state_dict()) == {"sums", "counts"} and prior.table() is None
    assert prior.sums.dtype == torch.float64 and prior.sums.shape == (5, 5)
    prior.step()
    assert set(prior.state_dict()) == {"prior", "sums", "counts"}
    assert prior.table().dtype == torch.float32 and prior.table().shape == (5, 5)
    torch.testing.assert_close(prior.prior[2], torch.full((5,), 0.2))  # unseen class: uniform row


def test_checkpoints_of_the_previous_version_still_load():
    """Earlier versions always held prior (float32), sums and counts (float64), GI on or off."""
    old = {
        "prior.prior": torch.softmax(torch.randn(4, 4), 1),
        "prior.sums": torch.rand(4, 4, dtype=torch.float64),
        "prior.counts": torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64),
    }
    gi = IKLLoss(num_classes=4, class_wise=True)
    gi.load_state_dict(old)
    for key, value in old.items():
        torch.testing.assert_close(gi.state_dict()[key], value)
    gi_off = IKLLoss(num_classes=4, class_wise=False)
    gi_off.load_state_dict(old)  # the unused prior of GI off is dropped
    assert gi_off.state_dict() == {}
    with pytest.raises(RuntimeError, match="Unexpected"):
        gi.load_state_dict({**old, "prior.other": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        IKLLoss(num_classes=5, class_wise=True).load_state_dict(old)


def test_loading_a_state_without_the_prior_resets_it_to_uniform():
    fed = ClassPrior(3)
    fed.update(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    fed.step()
    fresh_state = ClassPrior(3).state_dict()
    fed.load_state_dict(fresh_state)
    assert fed.table() is None and fed.state_dict() == {}


def test_gi_too_large_for_any_device_is_refused_at_construction():
    with pytest.raises(ConfigError, match="class_wise=false") as error:
        IKLLoss(num_classes=10_000_000, class_wise=True)
    assert "\n" not in str(error.value)


def test_gi_allocation_beyond_free_memory_is_refused(monkeypatch):
    from ikl.losses import prior as prior_module

    monkeypatch.setattr(prior_module, "_available_memory", lambda device: 10 * 2**20)
    prior = ClassPrior(4096)  # 134 MiB of float64 sums, 10 MiB free
    with pytest.raises(ConfigError, match="sums") as error:
        prior.update(torch.randn(2, 4096), torch.tensor([0, 1]))
    assert "\n" not in str(error.value) and prior.state_dict() == {}
    assert prior_memory_bytes(4096) == 12 * 4096**2 + 8 * 4096
