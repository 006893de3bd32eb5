"""Whole-step CUDA graphs and the sync-free step bookkeeping.

On the CPU the graph runner's ``eager`` backend drives the exact orchestration a CUDA graph gets
(warm-up, capture per key, static buffers, replays, eager fallback for a partial batch) with every
"replay" re-running the step; training through it must equal plain training bit for bit. The
``gpu`` tests capture real CUDA graphs (``pytest -m gpu``; ``scripts/bench_gpu.sh`` runs them).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ikl.engine.graphs import StepGraph, optimizer_key
from ikl.engine.sink import MetricSink
from ikl.engine.trainer import NAN_STEP_ENV, NonFiniteLossError, Trainer, TrainSettings, _EpochProgress
from ikl.errors import ConfigError
from ikl.losses import ClassPrior, IKLLoss
from ikl.tasks import DistillationTask
from ikl.tasks.at import AdversarialTask

CLASSES = 5


class ListLoader:
    """A train loader over fixed batches: a fixed order per epoch, the last batch partial."""

    def __init__(self, n: int = 28, batch: int = 8, features: int = 6, device: str = "cpu", seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, features, generator=generator).to(device)
        self.y = torch.randint(0, CLASSES, (n,), generator=generator).to(device)
        self.batch_size = batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.epoch))

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = self.indices()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size].to(self.x.device)
            yield self.x[idx], self.y[idx]


def mlp(features: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))


def kd_trainer(tmp_path, *, device: str = "cpu", optimizer=torch.optim.SGD, **settings) -> Trainer:
    task = DistillationTask(
        mlp(seed=0), mlp(seed=1), IKLLoss(num_classes=CLASSES, class_wise=True), warmup_epochs=2
    ).to(device)
    sgd = optimizer(task.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)  # a new lr every epoch
    return Trainer(
        task, sgd, scheduler, ListLoader(device=device), None,
        TrainSettings(epochs=3, device=torch.device(device), progress=False, **settings),
        run_dir=tmp_path, sink=MetricSink(tmp_path, enabled=False),
    )  # fmt: skip


def train(trainer: Trainer, epochs: int = 3) -> list[dict[str, float]]:
    metrics = []
    for epoch in range(1, epochs + 1):
        metrics.append(trainer.train_epoch(epoch))
        trainer.scheduler.step()
    return metrics


def state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {**trainer.task.state_dict(), **{f"opt{i}": t for i, t in enumerate(momentum_buffers(trainer))}}


def untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/") and k != "train/images_per_s"}


def momentum_buffers(trainer: Trainer) -> list[torch.Tensor]:
    return [s["momentum_buffer"] for s in trainer.optimizer.state.values()]


def test_graph_orchestration_trains_exactly_as_plain_steps(tmp_path):
    plain = kd_trainer(tmp_path / "plain")
    graphed = kd_trainer(tmp_path / "graphed")
    graphed.graph = StepGraph(lambda: graphed.optimizer.zero_grad(set_to_none=True), warmup_steps=2, backend="eager")
    plain_metrics, graphed_metrics = train(plain), train(graphed)

    expected, got = state(plain), state(graphed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert [untimed(m) for m in plain_metrics] == [untimed(m) for m in graphed_metrics]
    # 4 batches per epoch (8, 8, 8, 4): epoch 1 = 2 warm-up steps, a capture, a partial batch eagerly;
    # epochs 2 and 3 (new lr, new warm-up factor) capture again; replays = 1 + 3 + 3 full batches
    assert graphed.graph.captures == 3 and graphed.graph.replays == 7
    assert graphed.step == plain.step == 12
    graphed.load_state_dict(graphed.state_dict())  # new momentum buffers: the graph must be captured again
    assert graphed.graph._key is None


def test_step_graph_warms_every_shape_up_and_captures_per_key():
    calls = []

    def step_fn(x, y):
        calls.append((x.data_ptr(), x.shape[0]))
        return {"loss": x.sum()}

    graph = StepGraph(lambda: None, warmup_steps=1, backend="eager")
    x8, y8 = torch.ones(8, 3), torch.zeros(8, dtype=torch.long)
    x4, y4 = torch.ones(4, 3), y8[:4]
    assert graph.step("a", x8, y8, step_fn)["loss"] == 24  # warm-up: eagerly, on the caller's tensors
    assert calls[-1][0] == x8.data_ptr()
    first = graph.step("a", 2 * x8, y8, step_fn)  # captured, then replayed on the static copy
    assert first["loss"] == 48 and graph.captures == 1
    static_ptr = calls[-1][0]
    assert static_ptr != x8.data_ptr()
    assert graph.step("a", 3 * x8, y8, step_fn)["loss"] == 72 and calls[-1][0] == static_ptr
    assert first["loss"] == 72  # a replay overwrites the previous step's outputs, as on a GPU
    assert graph.step("a", x4, y4, step_fn)["loss"] == 12  # a new shape runs eagerly first ...
    assert calls[-1][0] == x4.data_ptr() and graph.captures == 1 and graph.eager_steps == 2
    assert graph.step("a", x8, y8, step_fn)["loss"] == 24 and graph.captures == 2  # ... and drops the graph
    assert graph.step("a", x4, y4, step_fn)["loss"] == 12 and graph.eager_steps == 3  # known shape, same key
    assert graph.step("b", x4, y4, step_fn)["loss"] == 12 and graph.captures == 3  # new key: a warm shape is captured
    assert graph.step("b", x8.t().contiguous().t(), y8, step_fn)["loss"] == 24  # another memory format ...
    assert graph.eager_steps == 4 and graph.captures == 3  # ... is another shape


def test_optimizer_key_changes_with_the_learning_rate():
    sgd = torch.optim.SGD(mlp().parameters(), lr=0.1, momentum=0.9)
    before = optimizer_key(sgd)
    sgd.param_groups[0]["lr"] = 0.05
    assert optimizer_key(sgd) != before and hash(before) is not None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device": "cpu"}, "needs a CUDA device"),
        ({"amp": "fp16"}, "use trainer.amp=bf16 or off"),
        ({"optimizer": lambda params, lr, **_: torch.optim.Adam(params, lr=lr)}, "torch.optim.SGD only, not Adam"),
        ({"optimizer": lambda params, lr, **kw: torch.optim.SGD(params, lr=torch.tensor(lr), **kw)}, "tensor learning"),
    ],
)
def test_cuda_graphs_refuse_what_cannot_be_captured(tmp_path, change, message):
    change = dict(change)
    optimizer = change.pop("optimizer", torch.optim.SGD)
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true") as info:
        kd_trainer(tmp_path, optimizer=optimizer, cuda_graphs=True, **change)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cuda_graphs_refuse_a_task_that_is_not_graph_safe(tmp_path):
    task = AdversarialTask(mlp(), IKLLoss(num_classes=CLASSES), epochs=2, eps=0.03)
    sgd = torch.optim.SGD(task.model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="AdversarialTask is not graph-safe"):
        Trainer(task, sgd, torch.optim.lr_scheduler.StepLR(sgd, 1), ListLoader(), None,
                TrainSettings(epochs=1, cuda_graphs=True), run_dir=tmp_path, sink=MetricSink(tmp_path, enabled=False))  # fmt: skip


def test_a_deferred_finite_check_reports_the_first_bad_step(tmp_path, monkeypatch):
    monkeypatch.setenv(NAN_STEP_ENV, "5")  # epoch 2, batch 1
    trainer = kd_trainer(tmp_path, finite_check_every=3)
    trainer.train_epoch(1)  # steps 0-3: the check after step 2 and at the epoch's end find nothing
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5 \(batch 1\)"):
        trainer.train_epoch(2)
    assert trainer.step == 6  # found at the first check after the bad step, not before
    report = json.loads((tmp_path / "nonfinite_batch.json").read_text())
    assert (report["epoch"], report["step"], report["batch_index"]) == (2, 5, 1)
    loader = ListLoader()
    loader.set_epoch(2)
    assert report["sample_indices"] == loader.indices()[8:16].tolist()
    assert {"loss", "loss_ce", "loss_wmse", "loss_sce"} <= set(report["terms"])
    assert report["terms"]["loss"] == "nan"  # the bad step's own value, written as strict JSON


def test_every_step_check_stops_at_the_bad_step(tmp_path, monkeypatch):
    monkeypatch.setenv(NAN_STEP_ENV, "2")
    trainer = kd_trainer(tmp_path)  # CPU: finite_check_every=0 means every step
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 2 \(batch 2\)"):
        trainer.train_epoch(1)
    assert trainer.step == 3


def test_epoch_progress_state_round_trip_continues_the_same_sums():
    generator = torch.Generator().manual_seed(0)
    outs = [
        {"loss": torch.rand((), generator=generator), "loss_ce": torch.rand((), generator=generator),
         "logits": torch.randn(4, 3, generator=generator), "time_attack": 0.25}
        for _ in range(6)
    ]  # fmt: skip
    labels = [torch.randint(0, 3, (4,), generator=generator) for _ in outs]
    whole = _EpochProgress()
    for out, y in zip(outs, labels, strict=True):
        whole.add(out, y)
    first = _EpochProgress()
    for out, y in zip(outs[:3], labels[:3], strict=True):
        first.add(out, y)
    resumed = _EpochProgress(**first.state())
    for out, y in zip(outs[3:], labels[3:], strict=True):
        resumed.add(out, y)
    assert resumed.state() == whole.state()
    host_sum = 0.0
    for out in outs:
        host_sum += float(out["loss"]) * 4
    assert whole.sums["loss"] == host_sum and whole.sums["time_attack"] == 1.5
    assert whole.correct == sum(int((o["logits"].argmax(1) == y).sum()) for o, y in zip(outs, labels, strict=True))


def test_prior_counts_equal_bincount():
    prior = ClassPrior(7)
    labels = torch.tensor([0, 3, 3, 6, 0, 0])
    prior.update(torch.randn(6, 7), labels)
    assert torch.equal(prior.counts, torch.bincount(labels, minlength=7).double())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_cuda_graph_training_matches_eager_training(tmp_path, amp):
    """Real capture: 3 epochs through CUDA graphs end where eager steps end (up to kernel choice)."""
    eager = kd_trainer(tmp_path / "eager", device="cuda", amp=amp)
    graphed = kd_trainer(tmp_path / "graphed", device="cuda", amp=amp, cuda_graphs=True)
    eager_metrics, graphed_metrics = train(eager), train(graphed)
    # epoch 1: 3 warm-up steps, then the partial batch's first (eager) run; epochs 2 and 3: a capture,
    # 3 replays, the partial batch eagerly
    assert (graphed.graph.captures, graphed.graph.replays, graphed.graph.eager_steps) == (2, 6, 6)
    expected, got = state(eager), state(graphed)
    for key in expected:
        if expected[key].is_floating_point():
            torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(got[key], expected[key]), key
    for e, g in zip(eager_metrics, graphed_metrics, strict=True):
        assert e["train/acc"] == g["train/acc"]
        assert abs(e["train/loss"] - g["train/loss"]) < 1e-4 * max(1.0, abs(e["train/loss"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_graphs_with_convolutions_channels_last_bf16_and_compile(tmp_path, compiled):
    """The fast KD configuration on a real CNN: captured training follows eager training closely."""
    from ikl.models import create_model

    def trainer(name: str, graphs: bool) -> Trainer:
        torch.manual_seed(0)
        student, teacher = create_model("resnet8", CLASSES), create_model("resnet8", CLASSES)
        task = DistillationTask(student, teacher, IKLLoss(num_classes=CLASSES, class_wise=True)).cuda()
        task.model = task.model.to(memory_format=torch.channels_last)
        task.teacher = task.teacher.to(memory_format=torch.channels_last)
        if compiled:
            task.model, task.teacher = torch.compile(task.model), torch.compile(task.teacher)
        sgd = torch.optim.SGD(task.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        loader = ListLoader(n=40, batch=16, features=3 * 32 * 32, device="cuda")
        loader.x = loader.x.view(-1, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        return Trainer(
            task, sgd, torch.optim.lr_scheduler.StepLR(sgd, 1, 0.5), loader, None,
            TrainSettings(epochs=2, device=torch.device("cuda"), amp="bf16", channels_last=True,
                          cuda_graphs=graphs, progress=False),
            run_dir=tmp_path / name, sink=MetricSink(tmp_path / name, enabled=False),
        )  # fmt: skip

    eager, graphed = trainer("eager", False), trainer("graphed", True)
    eager_metrics, graphed_metrics = train(eager, 2), train(graphed, 2)
    assert graphed.graph.captures == 1 and graphed.graph.replays == 2  # epoch 2: batches 16, 16 (+ 8 eagerly)
    for e, g in zip(eager_metrics, graphed_metrics, strict=True):
        assert abs(e["train/loss"] - g["train/loss"]) < 0.05 * max(1.0, abs(e["train/loss"]))
    for (name, p), q in zip(eager.task.model.named_parameters(), graphed.task.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0.05, atol=0.02, msg=name)
