"""Benchmark: the IKL loss as the tasks call it, against KL, forward + backward, time and peak memory.

    python scripts/bench_loss.py                 # CPU (and CUDA when present) -> results/bench_loss.md
    python scripts/bench_loss.py --print-only    # measure and print, write nothing
    python scripts/bench_loss.py --quick         # CI smoke: tiny sizes, a few pairs, no memory runs

Calls, per (B, C), in two settings:

- KD (a frozen teacher, T = 4): ``kl_div(s, t, 4)`` (ours, the reference), ``F.kl_div`` of the two
  log-softmaxes (torch's), and ``IKLLoss`` exactly as ``DistillationTask`` calls it: the terms,
  their sum, backward, then ``observe``. Twice: as released (``configs/loss/ikl.yaml``: GI off,
  τ = 100) and with GI on (``configs/loss/ikl_gi.yaml``: τ = 4, a built prior).
- AT (both logits learn, T = 1): ``kl_div(adv, nat)`` (the TRADES term), ``F.kl_div``, and
  ``IKLLoss`` as ``AdversarialTask`` calls it (``configs/loss/ikl_at.yaml``, GI on, a built prior):
  the terms, ``observe`` of the natural logits, their sum, backward.

Timing: the calls of one setting run round by round, in a shuffled order each round, and each
call's time is divided by the reference's time *in the same round*; the table gives the median of
those per-round ratios (and the median time). A noisy machine slows a round's calls alike, so
the ratios survive load that the absolute times do not. Peak memory: one forward+backward in a
fresh process per (call, B, C): the rise of the peak resident set (CPU; every allocation its own
mapping, the kernel's peak mark reset just before) or of ``max_memory_allocated`` (CUDA), in the
second of two calls; inputs and the GI prior (state, 12·C² bytes) are allocated before and not
counted.

The table is written only when the machine is quiet: the 1-minute load average before the run,
and after it less this benchmark's own threads, must not exceed the number of cores. Otherwise it
is printed and nothing is written (exit status 3). ``--quick`` is a smoke run and always writes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ikl.errors import ConfigError  # noqa: E402
from ikl.losses import IKLLoss, ikl_loss, kl_div  # noqa: E402
from ikl.losses.prior import prior_memory_bytes  # noqa: E402

GRID = [(b, c) for b in (64, 256, 1024) for c in (10, 100, 1000, 10000)]
TARGET = (512, 1000)  # the size of the 1.25× target
BIG = [(4096, 32000), (1024, 131072)]  # vocabulary-sized C: chunked calls only
QUICK = [(64, 10), (128, 100)]
KD_T, AT_T = 4.0, 1.0

# IKLLoss configurations, as configs/loss/*.yaml
KD_RELEASED = dict(wmse_weight=8.0, sce_weight=1.0, temperature=4.0, prior_temperature=100.0, class_wise=False)
KD_GI = dict(wmse_weight=8.0, sce_weight=1.0, temperature=4.0, prior_temperature=4.0, class_wise=True)
AT_GI = dict(wmse_weight=20.0, sce_weight=5.0, temperature=1.0, prior_temperature=4.0, class_wise=True)


@dataclass(frozen=True)
class Call:
    name: str
    setting: str  # "kd" or "at"
    reference: bool = False  # the denominator of the setting's ratios
    gi: bool = False  # needs a C×C prior
    big: bool = True  # also run at vocabulary-sized C


CALLS = [
    Call("kl_div", "kd", reference=True),
    Call("F.kl_div", "kd"),
    Call("kl_div chunked", "kd"),
    Call("IKL-KD as released (GI off)", "kd"),
    Call("IKL-KD GI on", "kd", gi=True, big=False),
    Call("kl_div", "at", reference=True),
    Call("F.kl_div", "at"),
    Call("kl_div chunked", "at"),
    Call("IKL-AT (GI on)", "at", gi=True, big=False),
    Call("IKL-AT (GI on), loss only", "at", gi=True, big=False),  # the same without observe
    Call("ikl_loss, given weights", "at"),
]
BIG_ONLY = {"kl_div chunked", "ikl_loss, given weights"}  # the vocabulary-scale variants
GI_LIMIT = 2 * 2**30  # GI calls whose prior would take more are skipped unless --big-gi


def calls_for(batch: int, classes: int, big: bool) -> list[Call]:
    if big:
        return [c for c in CALLS if c.big]
    return [c for c in CALLS if c.name not in BIG_ONLY]


def make_inputs(batch: int, classes: int, device: str, setting: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(batch, classes, generator=gen) * 3).to(device).requires_grad_()
    target = (torch.randn(batch, classes, generator=gen) * 3).to(device).requires_grad_(setting == "at")
    labels = torch.randint(0, classes, (batch,), generator=gen).to(device)
    return {"student": student, "target": target, "labels": labels}


def built_loss(config: dict, classes: int, device: str, target: torch.Tensor, labels: torch.Tensor) -> IKLLoss:
    """An ``IKLLoss`` whose prior (GI) was built from one epoch of these logits."""
    loss = IKLLoss(num_classes=classes, **config).to(device)
    loss.observe(target.detach(), labels)
    loss.end_epoch()
    return loss


def make_step(call: Call, inputs: dict[str, torch.Tensor], device: str) -> Callable[[], None]:
    """One forward+backward of ``call`` as the task makes it (gradients reset first)."""
    s, t, y = inputs["student"], inputs["target"], inputs["labels"]
    classes = s.shape[1]
    temperature = KD_T if call.setting == "kd" else AT_T
    chunk_rows = max(1, (1 << 18) // classes)

    def reset() -> None:
        s.grad = t.grad = None

    if call.name == "kl_div":
        return lambda: (reset(), kl_div(s, t, temperature).backward())
    if call.name == "kl_div chunked":
        return lambda: (reset(), kl_div(s, t, temperature, chunk_size=chunk_rows).backward())
    if call.name == "F.kl_div":

        def torch_kl() -> None:
            reset()
            log_q = F.log_softmax(s / temperature, dim=1)
            log_p = F.log_softmax(t / temperature, dim=1)
            F.kl_div(log_q, log_p, reduction="batchmean", log_target=True).backward()

        return torch_kl
    if call.name == "ikl_loss, given weights":
        weights = torch.softmax(t.detach() / 4.0, dim=1)
        return lambda: (reset(), ikl_loss(s, t, weights, wmse_weight=20.0, sce_weight=5.0).backward())
    config = {"IKL-KD as released (GI off)": KD_RELEASED, "IKL-KD GI on": KD_GI}.get(call.name, AT_GI)
    loss = built_loss(config, classes, device, t, y)
    if call.setting == "kd":

        def distillation() -> None:  # DistillationTask.forward: terms, their sum, observe
            reset()
            terms = loss(s, t, y)
            sum(terms.values()).backward()
            loss.observe(t, y)

        return distillation

    observe = not call.name.endswith("loss only")

    def adversarial() -> None:  # AdversarialTask.forward: terms, observe, their sum
        reset()
        terms = loss(s, t, y)
        if observe:
            loss.observe(t.detach(), y)
        sum(terms.values()).backward()

    return adversarial


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(steps: dict[str, Callable[[], None]], device: str, rounds: int, warmup: int) -> dict[str, list]:
    """Per-call times of ``rounds`` rounds, each round running every call once in a shuffled order."""
    order = list(steps)
    shuffle = random.Random(0)
    for _ in range(warmup):
        for name in order:
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def peak_memory_child(name: str, setting: str, batch: int, classes: int, device: str) -> int:
    """Runs in a fresh process: bytes of peak memory added by one forward+backward."""
    call = next(c for c in CALLS if c.name == name and c.setting == setting)
    inputs = make_inputs(batch, classes, device, setting)
    step = make_step(call, inputs, device)  # builds the GI prior (state) before the measurement
    step()  # a first call initialises what is lazy (kernels, autograd's engine); the second is measured
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak-RSS mark (Linux)
    before = _status_kib("VmRSS")
    step()
    return (_status_kib("VmHWM") - before) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory(call: Call, batch: int, classes: int, device: str, threads: int) -> int | None:
    cmd = [sys.executable, __file__, "--child", json.dumps([call.name, call.setting, batch, classes, device])]
    # Every allocation its own mapping, returned at free: the peak RSS then tracks live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "0", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode != 0:
        sys.stderr.write(f"peak memory of {call.name} at {batch}x{classes} failed:\n{out.stderr[-2000:]}\n")
        return None
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


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_name()}, {torch.get_num_threads()} threads"


def gi_fits(classes: int, device: str) -> str | None:
    """Why a GI call cannot run at ``classes`` here, or None."""
    need = prior_memory_bytes(classes)
    try:
        IKLLoss(num_classes=classes, class_wise=True)
    except ConfigError:
        return f"the C×C prior needs {need / 2**30:.1f} GiB"
    if need > GI_LIMIT:  # the benchmark does not take many GBs of a shared machine for the prior
        return f"the C×C prior needs {need / 2**30:.1f} GiB (--big-gi to run it)"
    return None


def bench(device: str, sizes, rounds: int, warmup: int, memory: bool, threads: int, big_gi: bool) -> list[dict]:
    rows = []
    for batch, classes, big in sizes:
        for setting in ("kd", "at"):
            calls = [c for c in calls_for(batch, classes, big) if c.setting == setting]
            inputs = make_inputs(batch, classes, device, setting)
            steps, skipped = {}, {}
            for call in calls:
                why = gi_fits(classes, device) if call.gi and not big_gi else None
                if why is None:
                    steps[call.name] = make_step(call, inputs, device)
                else:
                    skipped[call.name] = why
            n_rounds = rounds if not big else max(3, rounds // 6)
            times = time_interleaved(steps, device, n_rounds, warmup if not big else 1)
            reference = next(c.name for c in calls if c.reference)
            torch_ref = "F.kl_div"
            for call in calls:
                row = {"device": device, "B": batch, "C": classes, "setting": setting, "call": call.name}
                if call.name in skipped:
                    row["skipped"] = skipped[call.name]
                    rows.append(row)
                    continue
                mine = times[call.name]
                row["rounds"] = len(mine)
                row["ms"] = statistics.median(mine) * 1e3
                row["x_kl"] = statistics.median(a / b for a, b in zip(mine, times[reference], strict=True))
                row["x_torch"] = statistics.median(a / b for a, b in zip(mine, times[torch_ref], strict=True))
                row["x_best"] = min(mine) / min(times[reference])  # robust to stalls from other work
                if memory:
                    row["peak"] = peak_memory(call, batch, classes, device, threads)
                rows.append(row)
            del steps, inputs
        sys.stderr.write(f"  {device} {batch}x{classes} done\n")
    return rows


def fmt_mib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:.1f}"


def to_markdown(rows: list[dict], header: dict[str, str], quick: bool) -> str:
    lines = ["# Loss benchmark: forward + backward as the tasks call the losses", ""]
    if quick:
        lines += ["**Smoke run (`--quick`): tiny sizes, few rounds, no memory. Not a measurement.**", ""]
    lines += [
        "Generated by `python scripts/bench_loss.py` (its docstring says what each call is and how it is "
        "timed). × kl_div / × F.kl_div: median over the rounds of the call's time divided by the reference's "
        "time in the same round (`kl_div` = ours, the plain autograd formula; `F.kl_div` = torch's, of the two "
        "log-softmaxes), in the same setting; × kl_div, best: fastest call over fastest reference (a check: "
        "far from the median ratio means other work stalled the rounds). Peak memory: one forward+backward in a fresh process, above the "
        "inputs (and the GI prior, which is state). Chunked calls use chunks of 2^18 values.",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| device | B | C | setting | call | rounds | time (ms) | × kl_div | × F.kl_div | × kl_div, best | "
        "peak (MiB) | peak × kl_div |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    peaks = {(r["device"], r["B"], r["C"], r["setting"]): r.get("peak") for r in rows if r["call"] == "kl_div"}
    for r in rows:
        lead = f"| {r['device']} | {r['B']} | {r['C']} | {r['setting'].upper()} | {r['call']} |"
        if "skipped" in r:
            lines.append(f"{lead} | skipped: {r['skipped']} | | | | | |")
            continue
        ref_peak = peaks.get((r["device"], r["B"], r["C"], r["setting"]))
        peak = r.get("peak")
        mem_ratio = f"{peak / ref_peak:.2f}" if peak is not None and ref_peak else "—"
        lines.append(
            f"{lead} {r['rounds']} | {r['ms']:.3f} | {r['x_kl']:.2f} | {r['x_torch']:.2f} | {r['x_best']:.2f} "
            f"| {fmt_mib(peak)} | {mem_ratio} |"
        )
    lines += ["", *targets(rows)]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets (CPU): ≤ 1.25× kl_div at B=512, C=1000, ≤ 1.5× on the grid, peak ≤ 1.5×."""
    ikl = [r for r in rows if r["device"] == "cpu" and r["call"].startswith("IKL") and "x_kl" in r]
    if not ikl:
        return []
    out = ["Targets (CPU, IKL calls against `kl_div`):", ""]
    for r in (r for r in ikl if (r["B"], r["C"]) == TARGET):
        ok = "met" if r["x_kl"] <= 1.25 else "NOT met"
        out.append(f"- B = 512, C = 1000, {r['call']}: {r['x_kl']:.2f}× ≤ 1.25×: {ok}")
    grid = [r for r in ikl if (r["B"], r["C"]) in GRID]
    if grid:
        worst = max(grid, key=lambda r: r["x_kl"])
        ok = "met" if worst["x_kl"] <= 1.5 else "NOT met"
        out.append(
            f"- grid worst: {worst['x_kl']:.2f}× ({worst['call']}, B = {worst['B']}, C = {worst['C']}) ≤ 1.5×: {ok}"
        )
    peaks = {
        (r["B"], r["C"], r["setting"]): r.get("peak") for r in rows if r["device"] == "cpu" and r["call"] == "kl_div"
    }
    ratios = [
        (r["peak"] / peaks[(r["B"], r["C"], r["setting"])], r)
        for r in ikl
        if r.get("peak") is not None and peaks.get((r["B"], r["C"], r["setting"]))
    ]
    ratios = [(x, r) for x, r in ratios if r["B"] * r["C"] >= 1 << 16]  # below that the RSS is page noise
    if ratios:
        x, r = max(ratios, key=lambda item: item[0])
        ok = "met" if x <= 1.5 else "NOT met"
        out.append(f"- peak memory worst (B·C ≥ 2^16): {x:.2f}× ({r['call']}, B = {r['B']}, C = {r['C']}) ≤ 1.5×: {ok}")
    return out


def write_if_quiet(
    script: str,
    render: Callable[[list[dict], dict[str, str], bool], str],
    rows: list[dict],
    header: dict[str, str],
    args: argparse.Namespace,
    threads: int,
    load_before: float,
    started: float,
) -> None:
    """Print ``render``'s table and write it to ``args.out`` unless the machine was loaded (exit 3).

    Loaded: the 1-minute load average exceeded the core count before the run, or after it less
    this benchmark's own threads. ``args.quick`` (a smoke run) always writes."""
    n_cores = cores()
    load_after = load_average()
    header = {
        **header,
        "torch": f"{torch.__version__}; threads {threads} of {n_cores} cores",
        "load average (1 min)": f"{load_before:.2f} before, {load_after:.2f} after (this run's own threads "
        f"count {threads} of it); {time.time() - started:.0f} s",
    }
    table = render(rows, header, args.quick)
    sys.stdout.write(table)
    if args.print_only:
        return
    if (load_before > n_cores or load_after - threads > n_cores) and not args.quick:
        sys.stderr.write(
            f"{script}: not written: the machine is loaded (load {load_before:.2f} before, {load_after:.2f} "
            f"after, {n_cores} cores); rerun when it is quiet, or use --print-only\n"
        )
        sys.exit(3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="CI smoke: tiny sizes, few rounds, no memory runs")
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds per size (big sizes: a sixth)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, and CUDA if present"
    )
    parser.add_argument("--no-big", action="store_true", help="skip the vocabulary-sized rows")
    parser.add_argument("--sizes", help="only these sizes, e.g. 512x1000,64x10 (vocabulary rows: C > 10^4)")
    parser.add_argument("--big-gi", action="store_true", help="run GI calls even where the prior takes > 1 GiB")
    parser.add_argument("--print-only", action="store_true", help="print the table, write nothing")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench_loss.md"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(peak_memory_child(*json.loads(args.child)))
        return
    threads = torch.get_num_threads()
    load_before = load_average()
    if args.sizes:
        pairs = [tuple(int(v) for v in item.split("x")) for item in args.sizes.split(",")]
        sizes = [(b, c, c > 10_000) for b, c in pairs]
        rounds, warmup, memory = max(args.rounds, 25), 3, True
    elif args.quick:
        sizes = [(b, c, False) for b, c in QUICK]
        rounds, warmup, memory = 5, 1, False
    else:
        sizes = [(b, c, False) for b, c in [*GRID, TARGET]] + ([] if args.no_big else [(b, c, True) for b, c in BIG])
        rounds, warmup, memory = max(args.rounds, 25), 3, True
    devices = ["cpu"] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append("cuda")
    started = time.time()
    rows = [row for dev in devices for row in bench(dev, sizes, rounds, warmup, memory, threads, args.big_gi)]
    header = {f"`{dev}`": machine_name(dev) for dev in devices}
    write_if_quiet("bench_loss", to_markdown, rows, header, args, threads, load_before, started)


if __name__ == "__main__":
    main()
