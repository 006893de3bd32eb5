"""ClassPrior: hand-computed rows, unseen classes, state_dict, and all-reduce over two processes."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ikl.losses import ClassPrior


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
