"""The loss as a library: the README's loss section is true, the example runs, an install works from
outside the repository.

* Every ```python block of README.md runs, with small tensors bound to the names it uses but does
  not define (``BINDINGS``; a name the test does not know fails with its name).
* Every row of the function table under "## The losses" names callables of ``ikl.losses`` whose
  ``inspect.signature`` is exactly what the row writes: the parameter names in order, ``*`` where
  the keyword-only ones start, ``name=default`` for each default (a name without ``=`` has none),
  ``...`` for further parameters that all have defaults. Every public name of ``ikl.losses`` has a row.
* ``examples/ikl_kd_loop.py`` runs as a script in a subprocess and distils, with the prior's cycle.
* ``pip install --no-deps --no-build-isolation --target <tmp> <repo>`` gives a package that imports
  from elsewhere without Hydra/W&B/timm, carries its configs and console scripts, and leaves no
  untracked file in the checkout.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import inspect
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import ikl.losses
from tests.runutils import ROOT

README = ROOT / "README.md"
EXAMPLE = ROOT / "examples" / "ikl_kd_loop.py"
B, C, FEATURES = 8, 100, 16


# ----------------------------------------------------------------------------- README: the code blocks
def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _names(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names read, names bound) anywhere inside ``node``."""
    read, bound = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (read if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in sub.names}
        elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
            bound.add(sub.name)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
    return read, bound


def free_names(code: str) -> set[str]:
    """Names a block reads before it binds them (statement by statement; a loop may bind a name in
    its body before reading it), builtins excluded."""
    free: set[str] = set()
    bound: set[str] = set()
    for statement in ast.parse(code).body:
        read, binds = _names(statement)
        free |= read - bound - binds
        bound |= binds
    return free - set(dir(builtins))


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.randn(B, FEATURES), torch.randint(C, (B,))) for _ in range(3)]


def _model(frozen: bool = False) -> nn.Module:
    model = nn.Linear(FEATURES, C)
    if frozen:
        model.eval().requires_grad_(False)
    return model


STUDENT = {}


def _student() -> nn.Module:
    return STUDENT.setdefault("model", _model())


# What the README's blocks may use without defining it: C = 100 classes, batches of B = 8.
BINDINGS = {
    "student_logits": lambda: torch.randn(B, C, requires_grad=True),
    "target_logits": lambda: torch.randn(B, C),
    "teacher_logits": lambda: torch.randn(B, C),
    "natural_logits": lambda: torch.randn(B, C),
    "adv_logits": lambda: torch.randn(B, C, requires_grad=True),
    "weights": lambda: torch.softmax(torch.randn(B, C), dim=1),
    "labels": lambda: torch.randint(C, (B,)),
    "num_classes": lambda: C,
    "epochs": lambda: 2,
    "loader": _loader,
    "teacher": lambda: _model(frozen=True),
    "student": _student,
    "optimizer": lambda: torch.optim.SGD(_student().parameters(), lr=0.1),
}


def test_the_losses_section_shows_the_loss_and_the_prior_cycle():
    code = "\n".join(python_blocks(readme_section("The losses")))
    for call in ("ikl_loss(", "IKLLoss(", ".observe(", ".end_epoch()"):
        assert call in code, f"the README's loss example does not show {call}"


@pytest.mark.parametrize("index", range(len(python_blocks(README.read_text()))))
def test_readme_python_blocks_run(index, one_thread):
    code = python_blocks(README.read_text())[index]
    free = free_names(code)
    unknown = sorted(free - set(BINDINGS))
    assert not unknown, f"README block {index} uses {unknown} without defining them: add them to BINDINGS"
    STUDENT.clear()
    torch.manual_seed(0)
    namespace = {name: BINDINGS[name]() for name in sorted(free)}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    for name, value in namespace.items():
        if isinstance(value, torch.Tensor) and name.startswith("loss"):
            assert value.ndim == 0 and torch.isfinite(value), f"{name} = {value}"
        prior = getattr(value, "prior", None)
        if isinstance(value, nn.Module) and isinstance(prior, nn.Module) and ".observe(" in code:
            # the block ran the cycle: the prior is no longer the uniform 1/C it starts from
            assert not torch.allclose(prior.prior, torch.full_like(prior.prior, 1 / prior.num_classes))
    if "optimizer" in free:
        assert any(p.grad is not None for p in namespace["student"].parameters()), "the loop never trained"


def test_free_names_sees_use_before_definition():
    code = "y = f(x)\nfor a in b:\n    c = a\n    d = c + e\nx = 1\n"
    assert free_names(code) == {"f", "x", "b", "e"}


# ----------------------------------------------------------------------------- README: the function table
SIGNATURE = re.compile(r"`([A-Za-z_][\w.]*)\(([^`]*)\)`")


def table_rows() -> list[tuple[str, str]]:
    """(first cell, whole row) of each body row of the function table in "## The losses"."""
    lines = readme_section("The losses").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| function |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append((line.strip().strip("|").split("|")[0].strip(), line))
    return rows


def split_arguments(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [p for p in [*parts, current.strip()] if p]


def resolve(qualname: str):
    obj = ikl.losses
    for part in qualname.split("."):
        assert hasattr(obj, part), f"README names {qualname}, but ikl.losses has no {part}"
        obj = getattr(obj, part)
    return obj


def check_signature(qualname: str, documented: str) -> None:
    params = list(inspect.signature(resolve(qualname)).parameters.values())
    if "." in qualname and params and params[0].name == "self":
        params = params[1:]  # a method, documented as called on an instance
    tokens = split_arguments(documented)
    more = tokens[-1:] == ["..."]
    tokens = tokens[:-1] if more else tokens
    assert "..." not in tokens, f"{qualname}: '...' only at the end"
    written, keyword_only = [], False
    for token in tokens:
        if token == "*":
            keyword_only = True
            continue
        name, eq, default = (s.strip() for s in token.partition("="))
        written.append((name, keyword_only, ast.literal_eval(default) if eq else inspect.Parameter.empty))
    real = f"{qualname}{inspect.signature(resolve(qualname))}"
    names = [p.name for p in params]
    assert [w[0] for w in written] == names[: len(written)], f"README: {qualname}({documented}); real: {real}"
    rest = params[len(written) :]
    assert not rest or more, f"README: {qualname}({documented}) leaves out {[p.name for p in rest]}; real: {real}"
    assert all(p.default is not inspect.Parameter.empty for p in rest), f"{real}: '...' hides a required argument"
    for (name, kw_only, default), param in zip(written, params, strict=False):
        is_kw_only = param.kind is inspect.Parameter.KEYWORD_ONLY
        assert kw_only == is_kw_only, f"README: {qualname}: {name} is {'not ' * is_kw_only}positional; real: {real}"
        assert default == param.default and type(default) is type(param.default), (
            f"README: {qualname}: {name}={default!r}; real: {real}"
        )


def test_every_table_row_names_real_signatures():
    rows = table_rows()
    assert len(rows) >= 5
    for cell, row in rows:
        found = SIGNATURE.findall(cell)
        assert found, f"no `name(args)` in the first cell of: {row}"
        assert SIGNATURE.sub("", cell).strip(" ,") == "", f"the first cell must hold only `name(args)` items: {row}"
        for qualname, documented in found:
            check_signature(qualname, documented)


def test_every_public_loss_has_a_row():
    documented = {q.split(".")[0] for cell, _ in table_rows() for q, _ in SIGNATURE.findall(cell)}
    assert set(ikl.losses.__all__) <= documented, f"not in the README table: {set(ikl.losses.__all__) - documented}"


@pytest.mark.parametrize(
    "documented, wrong",
    [
        ("s, t, temperature=1.0, ...", "s"),  # another name
        ("student_logits, target_logits, temperature, ...", "temperature=<class"),  # a default left out
        ("student_logits, target_logits, temperature=4.0, ...", "temperature=4.0; real"),  # a wrong default
        ("student_logits, target_logits, *, temperature=1.0, ...", "positional"),  # not keyword-only
        ("student_logits, target_logits", "leaves out"),
    ],
)
def test_the_signature_check_can_fail(documented, wrong):
    with pytest.raises(AssertionError, match=re.escape(wrong) if wrong != "positional" else "positional"):
        check_signature("kl_div", documented)


def test_the_signature_check_accepts_more_keywords_and_methods():
    check_signature("ikl_loss", "student_logits, target_logits, weights, *, wmse_weight, sce_weight, ...")
    check_signature("IKLLoss.observe", "target_logits, labels")
    with pytest.raises(AssertionError, match="required"):
        check_signature("ikl_loss", "student_logits, target_logits, weights, ...")


# ----------------------------------------------------------------------------- the example
def load_example():
    spec = importlib.util.spec_from_file_location("ikl_kd_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_distils_with_the_prior_cycle_in_process(one_thread):
    result = load_example().main(["--data", "synthetic", "--epochs", "2", "--teacher-epochs", "3"])
    assert result["prior_diagonal"] > 0.2  # uniform is 0.1: end_epoch rebuilt it from observe
    assert math.isfinite(result["student_acc"]) and result["student_acc"] > 30


RUN_EXAMPLE = """
import runpy, sys
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf", "wandb", "timm"))
assert not loaded, f"the example pulled in {loaded}"
beyond = [m for m in sys.modules if m.startswith("ikl.") and not m.startswith("ikl.losses") and m != "ikl.errors"]
assert not beyond, f"ikl beyond ikl.losses (and its error types): {beyond}"
"""


@pytest.mark.slow
def test_example_runs_as_a_script(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", RUN_EXAMPLE, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    final = re.search(r"student test accuracy: ([\d.]+)% \(teacher ([\d.]+)%\)", proc.stdout)
    assert final, proc.stdout
    assert float(final.group(1)) >= 90 and float(final.group(2)) >= 90
    diagonals = [float(v) for v in re.findall(r"prior diagonal ([\d.]+)", proc.stdout)]
    assert diagonals and min(diagonals) > 0.2, "the prior was never rebuilt (uniform is 0.1)"
    assert "criterion state: prior.prior, prior.sums, prior.counts" in proc.stdout


# ----------------------------------------------------------------------------- installed from outside
CHECK_INSTALLED = """
import sys
from pathlib import Path

target = Path(sys.argv[1]).resolve()
import torch
import ikl
import ikl.losses

assert Path(ikl.__file__).resolve().is_relative_to(target), ikl.__file__
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"hydra", "omegaconf", "wandb", "timm", "torchvision", "matplotlib", "sklearn"})
assert not heavy, f"import ikl.losses imported {heavy}"
student = torch.randn(4, 10, requires_grad=True)
loss = ikl.losses.ikl_loss(student, torch.randn(4, 10), torch.softmax(torch.randn(4, 10), 1), wmse_weight=20.0, sce_weight=5.0)
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
from ikl.cli.paths import CONFIGS
assert CONFIGS.resolve() == target / "ikl" / "configs", CONFIGS
print("installed ok", loss.item())
"""


def porcelain() -> set[str]:
    proc = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True, text=True
    )
    return set(proc.stdout.splitlines()) if proc.returncode == 0 else set()


@pytest.mark.slow
def test_installed_package_works_outside_the_repository(tmp_path):
    before = porcelain()
    target = tmp_path / "site"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = porcelain()
    assert after <= before, f"the install left files in the checkout: {sorted(after - before)[:5]}"
    artifacts = [line for line in after if re.search(r"^\?\? (build|dist)/|\.egg-info", line)]
    assert not artifacts, f"build artefacts not ignored by git: {sorted(artifacts)[:5]}"
    assert (target / "ikl" / "configs" / "train_kd.yaml").is_file()
    assert (target / "ikl" / "configs" / "dataset" / "digits.yaml").is_file()
    run_env = {**env, "PYTHONPATH": str(target)}
    check = subprocess.run(
        [sys.executable, "-c", CHECK_INSTALLED, str(target)],
        cwd=elsewhere,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0 and "installed ok" in check.stdout, check.stdout + check.stderr
    script = target / "bin" / "ikl-train-kd"
    assert script.is_file()
    helped = subprocess.run(
        [str(script), "--help"], cwd=elsewhere, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stdout[-2000:] + helped.stderr[-2000:]
    assert "dataset: cifar10, cifar100" in helped.stdout and "digits" in helped.stdout  # the shipped configs were found
    assert "loss: " in helped.stdout and "ikl_gi" in helped.stdout
    assert not any(elsewhere.iterdir()), "--help wrote into the working directory"
