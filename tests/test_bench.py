"""The loss and step benchmarks: the smoke mode writes its table, a loaded machine writes none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts import bench_loss, bench_step
from tests.runutils import ROOT


def test_bench_loss_quick_writes_a_smoke_table(tmp_path):
    out = tmp_path / "bench_loss.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_loss.py"), "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "Smoke run" in table and "load average" in table and "threads" in table
    for call in ("IKL-KD as released (GI off)", "IKL-KD GI on", "IKL-AT (GI on)", "F.kl_div"):
        assert f"| {call} |" in table, call


def _fake_loss_rows(*args, **kwargs) -> list[dict]:
    row = dict(device="cpu", B=8, C=4, setting="kd", rounds=3, ms=1.0, x_kl=1.0, x_torch=1.0, x_best=1.0, peak=None)
    return [{**row, "call": "kl_div"}, {**row, "call": "IKL-KD as released (GI off)", "x_kl": 1.1}]


@pytest.mark.parametrize("loaded", [True, False])
def test_bench_loss_writes_nothing_on_a_loaded_machine(tmp_path, monkeypatch, loaded):
    out = tmp_path / "table.md"
    monkeypatch.setattr(bench_loss, "bench", _fake_loss_rows)
    monkeypatch.setattr(bench_loss, "cores", lambda: 2)
    monkeypatch.setattr(bench_loss, "load_average", lambda: 9.0 if loaded else 0.5)
    monkeypatch.setattr(
        sys, "argv", ["bench_loss.py", "--device", "cpu", "--no-big", "--threads", "1", "--out", str(out)]
    )
    if loaded:
        with pytest.raises(SystemExit) as exit_info:
            bench_loss.main()
        assert exit_info.value.code == 3 and not out.exists()
    else:
        bench_loss.main()
        assert "| IKL-KD as released (GI off) |" in out.read_text()


def test_bench_step_writes_nothing_on_a_loaded_machine(tmp_path, monkeypatch):
    out = tmp_path / "table.md"
    monkeypatch.setattr(bench_step, "bench", lambda *a: {"kd": [1.0, 1.0], "ikl": [1.1, 1.2], "ikl_gi": [1.2, 1.3]})
    monkeypatch.setattr(bench_loss, "cores", lambda: 2)  # (the shared check in bench_loss.write_if_quiet)
    monkeypatch.setattr(bench_step, "load_average", lambda: 0.5)  # quiet before the run...
    monkeypatch.setattr(bench_loss, "load_average", lambda: 9.0)  # ...loaded after it
    monkeypatch.setattr(bench_step.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        bench_step.main()
    assert exit_info.value.code == 3 and not out.exists()
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--print-only", "--out", str(out)])
    bench_step.main()
    assert not out.exists()
    monkeypatch.setattr(bench_loss, "load_average", lambda: 0.5)
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--out", str(out)])
    bench_step.main()
    assert "| IKL-KD as released (GI off) |" in out.read_text()
