"""Training-step throughput and memory of every backbone: `python -m bench.throughput`.

For each arch in conf/arch/ (or --archs) and each length L, one fresh process builds the backbone at
--d-model / --n-layers, then times full training steps (forward, backward, AdamW) on random inputs
of `--tokens` tokens per batch (batch = tokens // L, so every length does the same work for a
linear-time model). Printed and saved (CSV + markdown) per (arch, L):
- tokens/s of training steps (the median of --steps timed steps, after --warmup);
- peak memory: on CUDA the allocator's peak; on CPU the process's peak RSS above what it held
  before the first step (weights, optimizer state and activations of one step);
- model FLOPs per token of a training step (bench/flops.py: torch's flop counter, plus formulas for
  what it misses on CPU — attention, FFTs — and closed forms for Mamba's scan and convolution, which no
  dispatched op shows; the same count for every Mamba impl), the achieved FLOP/s and the efficiency:
  their share of the device's peak, on CPU the dense float32 matmul FLOP/s measured at the start of the
  run; on CUDA the GPU's dense bf16 tensor-core peak from its data sheet (PEAK_BF16, or --peak-tflops),
  else a measured bf16 matmul;
- the fitted exponent of time per sequence in L between the two longest lengths (1 = linear).

On a GPU: `python -m bench.throughput --device cuda --paper` runs every backbone at the paper-scale
lengths 1K, 4K and 16K under bf16 autocast (--dtype), with Mamba's fused kernels (impl=cuda) and its
PyTorch scan (impl=torch) side by side (--mamba-impls); on a CPU the side-by-side pair is the C++
scan (impl=cpp) and the PyTorch scan.

A fresh process per measurement keeps one model's memory out of the next one's peak.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Dense (no sparsity) bf16 tensor-core peak, FLOP/s, from NVIDIA's data sheets; first matching name wins.
PEAK_BF16 = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("L4", 121e12)]
PAPER = {"lengths": [1024, 4096, 16384], "tokens": 65536, "d_model": 256, "n_layers": 6}  # --paper
DEFAULTS = {"lengths": [256, 1024, 4096], "tokens": 16384, "d_model": 128, "n_layers": 4}
DTYPES = ("fp32", "bf16", "fp16")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_flops_of(name: str) -> float | None:
    """Data-sheet dense bf16 peak of a GPU named like torch.cuda.get_device_name(), or None."""
    return next((flops for key, flops in PEAK_BF16 if key in name), None)


def matmul_flops(device: str, n: int = 2048, repeats: int = 10) -> float:
    """Measured dense float32 matmul FLOP/s (bf16 on CUDA) of this device."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure(arch: str, length: int, args: dict, queue) -> None:
    """Child process: one (arch, L) measurement -> queue.put(dict)."""
    try:
        queue.put(time_steps(arch, length, args))
    except Exception as exc:  # report, do not kill the whole table
        queue.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


def build(arch: str, length: int, args: dict):
    """conf/arch/<arch>.yaml at args' d_model and n_layers, dropout 0, overrides args["set"], seed 0, on
    args["device"] in training mode."""
    import torch
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT))
    from recipes.model import build_backbone

    torch.manual_seed(0)
    cfg = OmegaConf.load(ROOT / "conf" / "arch" / f"{arch}.yaml")
    cfg = OmegaConf.merge(cfg, {"d_model": args["d_model"], "n_layers": args["n_layers"], "dropout": 0.0},
                          OmegaConf.from_dotlist(args["set"]))
    return build_backbone(cfg, max_len=length).to(args["device"]).train()


def time_steps(arch: str, length: int, args: dict) -> dict:
    """`arch` is a conf/arch name; `args["set"]` its overrides (e.g. impl=torch)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench import flops
    from recipes.model import n_params

    device = args["device"]
    model = build(arch, length, args)
    batch = max(1, args["tokens"] // length)
    x = torch.randn(batch, length, args["d_model"], device=device)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args["dtype"]]

    def step():
        # Autocast as training runs it (compute.precision); no loss scaling: this times, it does not learn.
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = model(x, mask).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with flops.counter() as counter:  # also the warm-up step (optimizer state is created)
        step()
    flops_per_step = counter.get_total_flops() + flops.uncounted_flops(model, batch, length)
    seconds = median_step_seconds(step, device, args["warmup"], args["steps"])
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # ru_maxrss is in KiB on Linux
        # statm and rusage count resident pages slightly differently: a step that allocates nothing
        # new can come out a fraction of a MB below zero.
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)
    return {"arch": arch, "L": length, "batch": batch, "params": n_params(model),
            "impl": str(getattr(model, "impl", "torch")),
            "step_s": seconds, "tokens_per_s": batch * length / seconds, "peak_mem_mb": peak / 2**20,
            "flops_per_token": flops_per_step / (batch * length), "flops_per_s": flops_per_step / seconds}


def median_step_seconds(step, device: str, warmup: int, steps: int) -> float:
    """Seconds of the median of `steps` calls of step() after `warmup` more. The median: on a shared or
    virtual machine a few steps come out much slower than the rest (we saw single steps 30% off), and a
    mean would move with them."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_fresh_process(target, args: tuple, timeout: float) -> dict:
    """target(*args, queue) in a spawned process -> the dict it put, or {"error": why not}."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return {"error": f"timeout after {timeout:.0f} s"}
    if queue.empty():
        return {"error": f"process died (exit {proc.exitcode}; out of memory?)"}
    return queue.get()


def exponent(rows: list[dict], arch: str, short: int, long: int) -> float | None:
    """Fitted p in time-per-sequence ~ L^p between two lengths (same tokens per batch)."""
    by_len = {r["L"]: r for r in rows if r["arch"] == arch and "tokens_per_s" in r}
    if short not in by_len or long not in by_len:
        return None
    per_seq = {n: n / by_len[n]["tokens_per_s"] for n in (short, long)}
    return math.log(per_seq[long] / per_seq[short]) / math.log(long / short)


def default_mamba_impls(device: str) -> list[str]:
    """Mamba's fast path next to its pure-PyTorch one: cuda on a GPU, the C++ scan on a CPU."""
    if device == "cuda":
        return ["cuda", "torch"]
    from archs import mamba_cpu

    return ["torch"] if mamba_cpu.unavailable_reason() else ["cpp", "torch"]


def entries(archs: list[str], mamba_impls: list[str], overrides: list[str]) -> list[tuple[str, str, list[str]]]:
    """(row label, arch, overrides) to measure: Mamba once per implementation, side by side."""
    return [(f"mamba:{impl}", arch, [*overrides, f"impl={impl}"]) if arch == "mamba" else (arch, arch, overrides)
            for arch in archs for impl in (mamba_impls if arch == "mamba" else [None])]


def main(argv: list[str] | None = None) -> int:
    archs = sorted(p.stem for p in (ROOT / "conf" / "arch").glob("*.yaml"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=archs, help=f"default: all of {', '.join(archs)}")
    ap.add_argument("--lengths", nargs="+", type=int, help=f"default: {DEFAULTS['lengths']}")
    ap.add_argument("--tokens", type=int, help=f"tokens per batch (batch = tokens // L); default {DEFAULTS['tokens']}")
    ap.add_argument("--d-model", type=int, help=f"default: {DEFAULTS['d_model']}")
    ap.add_argument("--n-layers", type=int, help=f"default: {DEFAULTS['n_layers']}")
    ap.add_argument("--paper", action="store_true", help=f"paper-scale defaults instead: {PAPER}")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                    help="autocast: auto = bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak (TFLOP/s) for the FLOP share; "
                    "default: the data sheet for known GPUs, else measured")
    ap.add_argument("--mamba-impls", nargs="+", choices=["auto", "cuda", "cpp", "torch"],
                    help="one mamba row per impl; default: cuda and torch on CUDA, cpp (if it builds) and torch on CPU")
    ap.add_argument("--steps", type=int, default=5, help="timed steps; their median is reported")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--set", nargs="*", default=[], help="arch overrides for every arch, e.g. mamba chunk_size=32")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)
    unknown = sorted(set(args.archs) - set(archs))
    if unknown:
        print(f"error: unknown arch {', '.join(unknown)}: choose from {', '.join(archs)}", file=sys.stderr)
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available here; use --device cpu (or auto)", file=sys.stderr)
        return 2
    for key, value in (PAPER if args.paper else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
    where = torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads"
    if args.peak_tflops:
        peak_flops, peak_from = args.peak_tflops * 1e12, "given (--peak-tflops)"
    elif device == "cuda" and peak_flops_of(where):
        peak_flops, peak_from = peak_flops_of(where), "data-sheet dense bf16 peak"
    else:
        peak_flops = matmul_flops(device)
        peak_from = f"measured dense {'bf16' if device == 'cuda' else 'float32'} matmul"
    print(f"# device: {device} ({where}); peak {peak_flops / 1e9:,.1f} GFLOP/s ({peak_from}); {dtype}; "
          f"d_model {args.d_model}, {args.n_layers} layers, {args.tokens} tokens per batch", flush=True)
    child_args = {"device": device, "d_model": args.d_model, "n_layers": args.n_layers, "tokens": args.tokens,
                  "steps": args.steps, "warmup": args.warmup, "dtype": dtype}
    impls = args.mamba_impls or default_mamba_impls(device)
    todo = entries(args.archs, impls, args.set)
    rows = []
    for label, arch, overrides in todo:
        for length in args.lengths:
            row = in_fresh_process(measure, (arch, length, {**child_args, "set": overrides}), args.timeout)
            row = {**row, "arch": label, "L": length}
            rows.append(row)
            if "error" in row:
                print(f"{label:12s} L={length:6d}  {row['error']}", flush=True)
            else:
                print(f"{label:12s} L={length:6d}  batch {row['batch']:4d}  {row['tokens_per_s']:10.0f} tok/s  "
                      f"{row['peak_mem_mb']:8.0f} MB  {row['flops_per_token'] / 1e6:8.2f} MFLOP/token  "
                      f"{row['flops_per_s'] / 1e9:6.2f} GFLOP/s  {row['flops_per_s'] / peak_flops:6.1%} of peak "
                      f"({row['impl']})", flush=True)
    table = render(rows, [label for label, _, _ in todo], args.lengths, peak_flops)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"throughput-{device}"
    import pandas as pd

    pd.DataFrame(rows).to_csv(f"{stem}.csv", index=False)
    Path(f"{stem}.md").write_text(table + "\n")
    Path(f"{stem}.json").write_text(json.dumps({"device": where, "peak_flops_per_s": peak_flops, "peak_from": peak_from,
                                                "dtype": dtype, "torch": torch.__version__, "rows": rows,
                                                "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    print(f"saved {stem}.csv, .md, .json")
    return 0


def render(rows: list[dict], archs: list[str], lengths: list[int], peak_flops: float) -> str:
    head = "| arch | params | " + " | ".join(f"L={n} tok/s | L={n} MB | L={n} MFLOP/token | L={n} efficiency"
                                             for n in lengths)
    head += f" | exponent {lengths[-2]}→{lengths[-1]} |" if len(lengths) > 1 else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arch in archs:
        cells, params = [], ""
        for n in lengths:
            r = next(r for r in rows if r["arch"] == arch and r["L"] == n)
            if "error" in r:
                cells += ["—", "—", "—", r["error"][:40]]
            else:
                params = f"{r['params']:,}"
                cells += [f"{r['tokens_per_s']:,.0f}", f"{r['peak_mem_mb']:,.0f}", f"{r['flops_per_token'] / 1e6:.2f}",
                          f"{r['flops_per_s'] / peak_flops:.1%}"]
        line = f"| {arch} | {params} | " + " | ".join(cells)
        if len(lengths) > 1:
            p = exponent(rows, arch, lengths[-2], lengths[-1])
            line += f" | {'—' if p is None else f'{p:.2f}'} |"
        else:
            line += " |"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
