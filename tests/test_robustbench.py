"""RobustBench models as evaluation targets (``checkpoint=robustbench:<id>``, ikl/eval/robustbench.py).

Fixtures (``tests/fixtures/robustbench``), generated once by a script run outside this repository
that built RobustBench's own classes from ``RobustBench/robustbench@78fcc9e``
(``robustbench/model_zoo/architectures/{wide_resnet,resnet,dm_wide_resnet}.py``, imported from the
files, not the package) exactly as its model zoo (``model_zoo/cifar10.py``, ``cifar100.py``) calls them:

* ``layouts.json``: for every (architecture, classes) of the table, the ``state_dict`` keys and
  shapes, in order, of the model built on the meta device (TRADES' ``sub_block1`` included);
* ``small_logits.json``: small seeded instances (WRN-10-2, ResNet18, PreActResNet18-V2,
  DMWideResNet-10-2 with CIFAR-10 and CIFAR-100 statistics), their layout, and their logits on
  ``torch.rand(2, 3, 32, 32, generator=manual_seed(1))`` after loading
  ``tests/robustbench_fill.seeded_state(layout)`` (eval mode).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from ikl.errors import CheckpointError, ConfigError
from ikl.eval import robustbench
from ikl.eval.checkpoints import fit_hint, guess_architecture
from ikl.models import create_model, list_models
from ikl.models.dm_wide_resnet import DMWideResNet
from ikl.models.wide_resnet import WideResNet
from tests.datautils import write_fake_cifar100
from tests.reliability.helpers import cli
from tests.robustbench_fill import seeded_state
from tests.runutils import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "robustbench"
LAYOUTS = json.loads((FIXTURES / "layouts.json").read_text())
SMALL = json.loads((FIXTURES / "small_logits.json").read_text())["models"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_layout(entry: robustbench.Entry) -> list[tuple[str, tuple[int, ...]]]:
    name = LAYOUTS["architectures"][f"{entry.architecture}|{entry.num_classes}"]
    return [(key, tuple(shape)) for key, shape in LAYOUTS["layouts"][name]]


ARCHITECTURES = {}
for _entry in robustbench.ENTRIES:
    ARCHITECTURES.setdefault((_entry.architecture, _entry.num_classes, _entry.model), _entry)


@pytest.mark.parametrize("entry", ARCHITECTURES.values(), ids=lambda e: f"{e.model}-{e.num_classes}-{e.architecture}")
def test_every_entry_loads_into_its_zoo_model_strictly(entry):
    """The zoo model has exactly the reference keys and shapes, in order (TRADES' unused sub_block1 aside),
    and load_state_dict(strict=True) accepts a state dict in the reference layout (on the meta device)."""
    reference = [(k, s) for k, s in _reference_layout(entry) if not k.startswith("sub_block")]
    with torch.device("meta"):
        model = create_model(entry.model, entry.num_classes)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == reference
    model.load_state_dict({k: torch.empty(s, device="meta") for k, s in reference}, strict=True, assign=True)


SMALL_MODELS = {
    "WideResNet(depth=10, widen_factor=2, num_classes=10)": lambda: WideResNet(10, 2, num_classes=10),
    "ResNet18()": lambda: create_model("resnet18", 10),
    "PreActResNet(PreActBlockV2, [2, 2, 2, 2], num_classes=10, bn_before_fc=True)": lambda: create_model(
        "preact_resnet18", 10
    ),
    "DMWideResNet(num_classes=10, depth=10, width=2, activation_fn=nn.SiLU, mean=CIFAR10_MEAN, std=CIFAR10_STD)": (
        lambda: DMWideResNet(10, 2, num_classes=10)
    ),
    "DMWideResNet(num_classes=100, depth=10, width=2, activation_fn=nn.SiLU, mean=CIFAR100_MEAN, std=CIFAR100_STD)": (
        lambda: DMWideResNet(10, 2, num_classes=100)
    ),
}


@pytest.mark.parametrize("reference", SMALL_MODELS)
def test_small_instances_give_the_reference_logits(reference):
    """Same weights, same logits: the forward (activations, padding, shortcut, pooling, and the
    normalisation DMWideResNet applies inside) is RobustBench's."""
    fixture = SMALL[reference]
    model = SMALL_MODELS[reference]().eval()
    model.load_state_dict(seeded_state([(k, s) for k, s in fixture["state_dict"]]), strict=True)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), torch.tensor(fixture["logits"]), rtol=1e-5, atol=1e-5)


def test_the_table_is_consistent():
    ids = [(e.dataset, e.model_id) for e in robustbench.ENTRIES]
    assert len(ids) == len(set(ids))
    for entry in robustbench.ENTRIES:
        assert entry.model in list_models() and entry.dataset in ("cifar10", "cifar100")
        assert 0 <= entry.autoattack_acc < entry.clean_acc <= 100 and len(entry.gdrive_id) == 33
        assert entry.threat_model == "Linf" and entry.eps == "8/255"
    published = {(e.dataset, e.model_id): (e.clean_acc, e.autoattack_acc) for e in robustbench.ENTRIES}
    # the paper's rows (PAPER.md §5.1 "RobustBench" column, model_info/<dataset>/Linf/<id>.json)
    assert published["cifar100", "Cui2023Decoupled_WRN-34-10"] == (65.76, 31.91)
    assert published["cifar100", "Cui2023Decoupled_WRN-34-10_autoaug"] == (65.93, 32.52)
    assert published["cifar100", "Cui2023Decoupled_WRN-28-10"] == (73.85, 39.18)
    assert published["cifar10", "Cui2023Decoupled_WRN-34-10"] == (85.31, 57.09)
    assert published["cifar10", "Cui2023Decoupled_WRN-28-10"] == (92.16, 67.73)


def test_references_name_one_entry():
    entry = robustbench.find_entry("robustbench:Cui2023Decoupled_WRN-34-10_autoaug")
    assert (entry.dataset, entry.model) == ("cifar100", "wrn_34_10")
    assert robustbench.find_entry("robustbench:cifar10/Cui2023Decoupled_WRN-28-10").model == "wrn_28_10_swish"
    assert robustbench.find_entry("robustbench:cifar100/Linf/Cui2023Decoupled_WRN-28-10").num_classes == 100
    assert robustbench.find_entry("robustbench:Cui2023Decoupled_WRN-28-10", "cifar10").dataset == "cifar10"
    assert entry.path("models") == Path("models/cifar100/Linf/Cui2023Decoupled_WRN-34-10_autoaug.pt")
    with pytest.raises(ConfigError, match="on the cifar10 and cifar100 RobustBench boards; say which"):
        robustbench.find_entry("robustbench:Cui2023Decoupled_WRN-28-10")
    with pytest.raises(ConfigError, match="not among the .* ids our zoo can load .similar: Cui2023Decoupled"):
        robustbench.find_entry("robustbench:Cui2023Coupled")
    with pytest.raises(ConfigError, match="only RobustBench's Linf entries"):
        robustbench.find_entry("robustbench:cifar10/L2/Cui2023Decoupled_WRN-34-10")


def test_leaderboard_verdict_and_tolerances():
    entry = robustbench.find_entry("robustbench:cifar100/Cui2023Decoupled_WRN-34-10")
    close = robustbench.compare_with_leaderboard(entry, 0.6576, 0.3186, comparable=True)
    assert close["within_tolerance"] is True and close["delta_autoattack_pp"] == pytest.approx(-0.05)
    far = robustbench.compare_with_leaderboard(entry, 0.6576, 0.3170, comparable=True)
    assert far["within_tolerance"] is False
    subset = robustbench.compare_with_leaderboard(entry, 0.6, 0.3, comparable=False, why_not="n_ex=100 of 10000")
    assert subset["within_tolerance"] is None and subset["not_compared_because"] == "n_ex=100 of 10000"


def _meta_state(entry: robustbench.Entry) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in _reference_layout(entry)}


def test_a_dm_wide_resnet_state_dict_is_named_in_the_hint():
    """RobustBench's Cui2023Decoupled_WRN-28-10 keys tried as the TRADES wrn_28_10 (155 missing and 155
    unexpected keys): the hint says what they are and which model= loads them."""
    state = _meta_state(robustbench.find_entry("robustbench:cifar100/Cui2023Decoupled_WRN-28-10"))
    assert guess_architecture(state)[1:] == ("wrn_28_10_swish", 100)
    hint = fit_hint(state, "wrn_28_10", 100)
    assert "RobustBench's DMWideResNet-28-10" in hint and hint.endswith("pass model=wrn_28_10_swish")
    trades = _meta_state(robustbench.find_entry("robustbench:cifar100/Cui2023Decoupled_WRN-34-10"))
    assert fit_hint(trades, "wrn_28_10", 100).endswith(
        "WideResNet-34-10 (ReLU, no normalisation inside): pass model=wrn_34_10"
    )
    small = SMALL[next(k for k in SMALL if "CIFAR10_STD" in k)]["state_dict"]  # DMWideResNet-10-2
    small_state = {k: torch.empty(s, device="meta") for k, s in small}
    assert "DMWideResNet-10-2" in fit_hint(small_state, "wrn_28_10_swish", 10)
    assert fit_hint(small_state, "wrn_28_10_swish", 10).endswith("our zoo has no wrn_10_2_swish")


# ---------------------------------------------------------------------- the real command line
ENTRY = "robustbench:cifar100/Addepalli2022Efficient_RN18"  # a ResNet-18: small enough to save in a test
RB_QUICK = ["n_ex=4", "batch_size=4", "evaluations=[pgd1]", "logger.mode=disabled", "device=cpu", "results_dir=null"]


def _cache(tmp_path: Path, layout: str = "state_dict") -> Path:
    """A RobustBench file in its cache layout: ``{"state_dict": {"module." + key: ...}}`` (or bare)."""
    entry = robustbench.find_entry(ENTRY)
    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in create_model(entry.model, entry.num_classes).state_dict().items()}
    path = entry.path(tmp_path / "models")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state} if layout == "state_dict" else state, path)
    return path


def test_a_robustbench_entry_is_evaluated_from_the_cache_layout(tmp_path):
    """No dataset=/model=: both come from the entry; dataset.builder.root= applies on top."""
    _cache(tmp_path)
    write_fake_cifar100(tmp_path / "data", train=100, test=20)
    args = [
        f"checkpoint={ENTRY}",
        f"robustbench.dir={tmp_path / 'models'}",
        f"dataset.builder.root={tmp_path / 'data'}",
    ]
    code, stderr = cli("eval_autoattack.py", [*args, f"output_dir={tmp_path / 'out'}", *RB_QUICK])
    assert code == 0, stderr[-3000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert (result["model"], result["dataset"], result["num_classes"]) == ("resnet18", "cifar100", 100)
    assert result["checkpoint_layout"] == "robustbench" and result["provenance"]["dataset"] == "RobustBench"
    board = result["leaderboard"]
    assert board["published_clean_acc_pct"] == 65.45 and board["published_autoattack_acc_pct"] == 27.67
    assert board["within_tolerance"] is None and "AutoAttack was not run" in board["not_compared_because"]
    assert board["delta_clean_pp"] == pytest.approx(100 * result["clean_acc"] - 65.45)
    assert (
        "RobustBench Addepalli2022Efficient_RN18 (cifar100, Linf): clean" in (tmp_path / "out" / "eval.log").read_text()
    )


def test_robustbench_file_takes_a_bare_state_dict_anywhere(tmp_path):
    path = _cache(tmp_path, layout="bare")
    moved = path.rename(tmp_path / "rn18.pt")
    write_fake_cifar100(tmp_path / "data", train=100, test=20)
    args = [f"checkpoint={ENTRY}", f"robustbench.file={moved}", f"dataset.builder.root={tmp_path / 'data'}"]
    code, stderr = cli("eval_autoattack.py", [*args, f"output_dir={tmp_path / 'out'}", *RB_QUICK])
    assert code == 0, stderr[-3000:]
    assert json.loads((tmp_path / "out" / "result.json").read_text())["checkpoint_file"] == str(moved)


def test_missing_weights_say_where_to_put_them(tmp_path):
    args = ["checkpoint=robustbench:cifar100/Cui2023Decoupled_WRN-34-10", f"robustbench.dir={tmp_path / 'm'}"]
    code, stderr = cli("eval_autoattack.py", [*args, f"output_dir={tmp_path / 'out'}", "logger.mode=disabled"])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr[-2000:]
    where = tmp_path / "m" / "cifar100" / "Linf" / "Cui2023Decoupled_WRN-34-10.pt"
    assert f"are not at {where}; put the file there" in lines[0]
    assert f"gdown 1whziIioVu5SGI1fBKyc331IfG_1MgenN -O {where}" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "m").exists()


def test_an_ambiguous_id_asks_which_board(tmp_path):
    args = ["checkpoint=robustbench:Cui2023Decoupled_WRN-28-10", f"robustbench.dir={tmp_path}", "logger.mode=disabled"]
    code, stderr = cli("eval_autoattack.py", args)
    assert code == 2 and "say which: checkpoint=robustbench:cifar10/Cui2023Decoupled_WRN-28-10" in stderr
    code, stderr = cli("eval_autoattack.py", [*args, "dataset=cifar10"])  # dataset= picks the board
    assert code == 2 and "cifar10/Linf/Cui2023Decoupled_WRN-28-10.pt; put the file there" in stderr


def test_wrong_weights_for_an_entry_are_one_line(tmp_path):
    entry = robustbench.find_entry(ENTRY)
    path = entry.path(tmp_path / "models")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": create_model("resnet8", 100).state_dict()}, path)
    args = [f"checkpoint={ENTRY}", f"robustbench.dir={tmp_path / 'models'}", "logger.mode=disabled"]
    code, stderr = cli("eval_autoattack.py", args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "does not fit model=resnet18 (100 classes)" in lines[0], stderr[-2000:]
    with pytest.raises(CheckpointError, match="is a directory"):
        robustbench.weight_file(entry, file=tmp_path)


@pytest.mark.slow
def test_verify_script_smoke(tmp_path):
    """scripts/verify_robustbench.sh in smoke mode: a stand-in file in RobustBench's cache layout, the
    real evaluator on digits, the summary table (not compared: digits, 8 images, no AutoAttack)."""
    env = {**os.environ, "SMOKE": "1", "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "verify_robustbench.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "rb_models" / "cifar10" / "Linf" / "Addepalli2022Efficient_RN18.pt").is_file()
    summary = (tmp_path / "robustbench" / "summary.md").read_text()
    assert "| Addepalli2022Efficient_RN18 | cifar10 |" in summary and "not compared (AutoAttack was not run" in summary


def test_a_dm_state_dict_for_another_model_is_one_line_naming_it(tmp_path):
    """Through the command line: DMWideResNet keys given to the TRADES WRN say what they are."""
    small = SMALL[next(k for k in SMALL if "CIFAR10_STD" in k)]["state_dict"]
    torch.save(seeded_state([(k, s) for k, s in small]), tmp_path / "dm.pt")
    args = [f"checkpoint={tmp_path / 'dm.pt'}", "model=wrn_28_10", "dataset=digits", "logger.mode=disabled"]
    code, stderr = cli("eval_autoattack.py", args)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr[-2000:]
    assert "does not fit model=wrn_28_10 (10 classes)" in lines[0]
    assert "its keys are RobustBench's DMWideResNet-10-2 (the DeepMind/DM-AT WideResNet" in lines[0]
