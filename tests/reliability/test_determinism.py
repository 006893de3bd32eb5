"""The same seed and config give bit-identical results twice on CPU (see results/reliability.md for GPUs)."""

from __future__ import annotations

import json

import pytest

from tests.reliability.helpers import compare_runs
from tests.reliability.report import REPORT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "kind,script",
    [
        pytest.param("kd", "train_kd.py", marks=pytest.mark.jobs("kd-uninterrupted-1", "kd-uninterrupted-2")),
        pytest.param("at", "train_at.py", marks=pytest.mark.jobs("at-uninterrupted-1", "at-uninterrupted-2")),
    ],
)
def test_same_seed_and_config_give_identical_bits(jobs, kind, script):
    first, second = jobs.get(f"{kind}-uninterrupted-1"), jobs.get(f"{kind}-uninterrupted-2")
    compared = compare_runs(first, second)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (first, second)]
    for summary in summaries:
        summary.pop("run_dir")
        summary.pop("curves")  # a path inside the run dir
    assert summaries[0] == summaries[1]
    REPORT.add(
        "determinism",
        f"{script} ({'ikl_gi, class prior' if kind == 'kd' else 'ikl_at, AWP, epoch and iteration EMA'}), "
        "2 epochs, seed 0, two separate processes",
        f"{compared['files']} checkpoint files ({compared['tensors']} tensors: weights, optimizer, scheduler, RNG "
        f"states{', class prior' if kind == 'kd' else ', EMA copies, prior'}), {compared['records']} metric records "
        "(timings aside), summary.json",
        "bit-identical",
    )
