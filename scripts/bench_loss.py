"""Benchmark: forward+backward time and peak memory of kl_div, ikl_loss and the naive pairwise form.

    python scripts/bench_loss.py                 # CPU (and CUDA when present) -> results/bench_loss.md
    python scripts/bench_loss.py --quick         # fewer repeats, small sizes (CI smoke)

Timings interleave the losses run by run (A, B, C, A, B, C, ...) so that a noisy shared machine
slows them alike; each is the median of ``--repeats`` runs after warm-up. Peak memory is measured
for each (loss, B, C) in a fresh subprocess: on CPU the rise of the process's peak resident set
size during one forward+backward (the kernel's peak mark is reset just before it), on CUDA ``torch.cuda.max_memory_allocated`` above the inputs.
The naive form is skipped where its B×C×C tensors would need more than 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ikl.losses import ikl_loss, kl_div  # noqa: E402
from tests.oracles import pairwise_ikl  # noqa: E402

NAIVE_LIMIT_BYTES = 4 * 1024**3
NAIVE_TENSORS = 6  # pairwise weights, two Δ, their difference, its square, and its gradient


def make_inputs(batch: int, classes: int, device: str) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(batch, classes, generator=gen) * 3).to(device).requires_grad_()
    target = (torch.randn(batch, classes, generator=gen) * 3).to(device).requires_grad_()
    weights = torch.softmax(torch.randn(batch, classes, generator=gen), 1).to(device)
    return student, target, weights


LOSSES = {
    "kl_div": lambda s, t, w: kl_div(s, t),
    "ikl_loss": lambda s, t, w: ikl_loss(s, t, w, wmse_weight=20.0, sce_weight=5.0),
    "naive_pairwise": lambda s, t, w: pairwise_ikl(s, t, w, wmse_weight=20.0, sce_weight=5.0),
}


def naive_fits(batch: int, classes: int) -> bool:
    return NAIVE_TENSORS * batch * classes * classes * 4 <= NAIVE_LIMIT_BYTES


def step(name: str, inputs: tuple[torch.Tensor, ...]) -> None:
    student, target, weights = inputs
    student.grad = target.grad = None
    LOSSES[name](student, target, weights).backward()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(names: list[str], inputs, device: str, repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        for name in names:
            step(name, inputs)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            sync(device)
            start = time.perf_counter()
            step(name, inputs)
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_memory_child(name: str, batch: int, classes: int, device: str) -> int:
    """Runs in a fresh process: bytes of peak memory added by one forward+backward."""
    step(name, make_inputs(2, 2, device))  # start autograd's engine and allocators outside the measurement
    inputs = make_inputs(batch, classes, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(name, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # Reset the kernel's peak-RSS mark (Linux: "5" > clear_refs), then read it back after the step.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    step(name, inputs)
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(name: str, batch: int, classes: int, device: str) -> int:
    cmd = [sys.executable, __file__, "--child", json.dumps([name, batch, classes, device])]
    # Every allocation its own mapping, returned at free: the peak RSS then tracks live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "0", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what platform knows)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def bench_device(device: str, sizes, repeats: int, warmup: int) -> list[dict]:
    rows = []
    for batch, classes in sizes:
        names = [n for n in LOSSES if n != "naive_pairwise" or naive_fits(batch, classes)]
        times = time_interleaved(names, make_inputs(batch, classes, device), device, repeats, warmup)
        for name in LOSSES:
            row = {"device": device, "B": batch, "C": classes, "loss": name}
            if name in times:
                row["ms"] = times[name] * 1e3
                row["peak_mib"] = peak_memory(name, batch, classes, device) / 2**20
            else:
                need = NAIVE_TENSORS * batch * classes * classes * 4 / 2**30
                row["skipped"] = f"needs ~{need:.1f} GB > 4 GB"
            rows.append(row)
    return rows


def to_markdown(rows: list[dict], devices: dict[str, str], repeats: int) -> str:
    lines = [
        "# Loss benchmark: forward + backward",
        "",
        "Generated by `python scripts/bench_loss.py`. Median of "
        f"{repeats} interleaved runs after warm-up; peak memory = rise of the peak resident set (CPU; peak reset through /proc/self/clear_refs) or of "
        "`max_memory_allocated` (CUDA) during one forward+backward in a fresh process. "
        "Ratios are against `kl_div` in the same run. `ikl_loss` = wMSE (class-wise weights, "
        "gradient into both inputs) + sCE, the IKL-AT setting.",
        "",
    ]
    lines += [f"- `{dev}`: {name}" for dev, name in devices.items()]
    lines += [
        "",
        "| device | B | C | loss | time (ms) | × kl_div | peak mem (MiB) | × kl_div |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["device"], r["B"], r["C"]): r for r in rows if r["loss"] == "kl_div"}
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['device']} | {r['B']} | {r['C']} | {r['loss']} | skipped: {r['skipped']} | | | |")
            continue
        ref = base[(r["device"], r["B"], r["C"])]
        mem_ratio = r["peak_mib"] / ref["peak_mib"] if ref["peak_mib"] > 0 else float("nan")
        lines.append(
            f"| {r['device']} | {r['B']} | {r['C']} | {r['loss']} | {r['ms']:.3f} | {r['ms'] / ref['ms']:.2f} "
            f"| {r['peak_mib']:.1f} | {mem_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_loss.md"))
    args = parser.parse_args()
    if args.child:
        print(peak_memory_child(*json.loads(args.child)))
        return
    sizes = [(128, 10), (128, 100)] if args.quick else [(b, c) for b in (128, 512) for c in (10, 100, 1000)]
    repeats, warmup = (5, 2) if args.quick else (max(args.repeats, 20), 5)
    devices = {"cpu": machine_name("cpu")}
    if torch.cuda.is_available():
        devices["cuda"] = machine_name("cuda")
    rows = [row for dev in devices for row in bench_device(dev, sizes, repeats, warmup)]
    table = to_markdown(rows, devices, repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
