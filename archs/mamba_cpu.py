"""Mamba's selective scan as compiled CPU code (`impl=cpp`): archs/mamba_scan.cpp, built on first use.

Why: the PyTorch scan (archs/mamba.py, `SelectiveScan`) must make ~14 passes over (T, b, n, e)
tensors per chunk, each a separate kernel launch; a loop that keeps the state in registers does the
same arithmetic in one pass. The source is plain C++ behind a C interface, loaded with ctypes: no
PyTorch headers, so a build takes about a second, with the system's C++ compiler ($CXX, else c++).

The library is cached in $SPTBENCH_KERNEL_CACHE (default ~/.cache/sptbench/kernels) under a hash of
the source, the flags, the compiler and this CPU's model and instruction set (the build uses
-march=native, so a library from another CPU must never be loaded). It is written to a temporary
name and renamed, so concurrent first runs never load a half-written file.

-ffast-math lets the compiler vectorize exp (glibc's libmvec). It may treat NaN loosely inside the
scan; a non-finite input still yields a non-finite loss, which the training loop stops on.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("mamba_scan.cpp")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-shared", "-fPIC"]


class KernelUnavailable(RuntimeError):
    """The C++ scan cannot be built or loaded here; the message says why."""


def cpu_signature() -> str:
    """This CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(dict.fromkeys(keep))  # the first core's lines; every core repeats them
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir() -> Path:
    if os.environ.get("SPTBENCH_KERNEL_CACHE"):
        return Path(os.environ["SPTBENCH_KERNEL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sptbench" / "kernels"


def compile_library(cxx: str, target: Path) -> None:
    """Compile SOURCE into `target` (atomically); libmvec is linked where it exists (glibc)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        for libs in (["-lmvec", "-lm"], ["-lm"]):
            out = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE), *libs], capture_output=True, text=True,
                                 timeout=300)
            if out.returncode == 0:
                os.replace(tmp, target)
                return
        lines = (out.stderr or out.stdout).strip().splitlines() or ["no output"]
        raise KernelUnavailable(f"{cxx} failed to build {SOURCE.name}: {lines[-1]}")
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded scan library, built if needed; raises KernelUnavailable with the reason."""
    cxx = os.environ.get("CXX", "c++")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelUnavailable(f"no C++ compiler ({cxx}: {exc}); install g++ or clang++, or set CXX") from exc
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, cpu_signature()]).encode())
    target = cache_dir() / f"mamba_scan-{key.hexdigest()[:16]}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KernelUnavailable(f"cannot create {target.parent} ({exc}); set SPTBENCH_KERNEL_CACHE") from exc
        compile_library(cxx, target)
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        raise KernelUnavailable(f"cannot load {target} ({exc}); delete it to rebuild") from exc
    for name in ("scan_forward_f32", "scan_forward_f64", "scan_backward_f32", "scan_backward_f64"):
        getattr(lib, name).restype = None
    lib.scan_channels_per_task.restype = lib.scan_chunk_steps.restype = ctypes.c_long
    return lib


def unavailable_reason() -> str | None:
    """None if the C++ scan works here, else why not."""
    try:
        library()
    except KernelUnavailable as exc:
        return str(exc)
    return None


@functools.cache
def pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="mamba-scan")


def run_tasks(fn, tasks: int, *args) -> None:
    """fn(*args, first, last) over [0, tasks) split across torch's thread count; ctypes releases the GIL
    during each call, so the ranges run in parallel."""
    workers = max(1, min(torch.get_num_threads(), tasks))
    bounds = [tasks * i // workers for i in range(workers + 1)]
    if workers == 1:
        fn(*args, ctypes.c_long(0), ctypes.c_long(tasks))
        return
    futures = [pool(workers).submit(fn, *args, ctypes.c_long(lo), ctypes.c_long(hi))
               for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
    for f in futures:
        f.result()


def ptr(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def rows_of(z: Tensor) -> tuple[Tensor, int]:
    """z (b, l, e) as the kernel reads it: channels contiguous, rows a fixed number of elements apart
    (a slice of in_proj's output qualifies without a copy). -> (tensor, row stride)."""
    bsz, length, _ = z.shape
    if z.stride(2) != 1 or z.stride(0) != z.stride(1) * length:
        z = z.contiguous()
    return z, z.stride(1)


class CppScan(torch.autograd.Function):
    """out = (selective_scan(x, softplus(dt + dt_bias), A, B, C) + D x) · silu(z) with dt = dt_low W^T,
    as mamba-ssm's selective_scan_fn(..., D, z, delta_bias, delta_softplus=True): x, z (b, l, e);
    dt_low (b, l, r), W (e, r); A (e, n); B, C (b, l, n); D, dt_bias (e,) -> out (b, l, e).
    float32 or float64, CPU tensors.

    Saves its inputs and the state at every chunk boundary (n·e·l/64 numbers per row), and not dt:
    the backward recomputes it (a rank-r product) and the states, one chunk at a time."""

    @staticmethod
    def forward(ctx, x, dt_low, dt_weight, a, b, c, d, z, dt_bias):
        lib = library()
        x, a, b, c, d, dt_bias = (t.contiguous() for t in (x, a, b, c, d, dt_bias))
        dt = dt_low @ dt_weight.T
        z, zs = rows_of(z)
        bsz, length, e = x.shape
        n = a.shape[1]
        per_task, per_chunk = lib.scan_channels_per_task(), lib.scan_chunk_steps()
        blocks, chunks = -(-e // per_task), -(-length // per_chunk)
        out = torch.empty_like(x)
        bounds = x.new_empty(bsz, blocks, chunks, n, per_task)
        dims = [ctypes.c_long(v) for v in (bsz, length, e, n, zs)]
        run_tasks(getattr(lib, f"scan_forward_{suffix(x)}"), bsz * blocks,
                  *map(ptr, (x, dt, a, b, c, d, z, dt_bias, out, bounds)), *dims)
        ctx.save_for_backward(x, dt_low, dt_weight, a, b, c, d, z, dt_bias, bounds)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        lib = library()
        x, dt_low, dt_weight, a, b, c, d, z, dt_bias, bounds = ctx.saved_tensors
        dout = dout.contiguous()
        dt = dt_low @ dt_weight.T
        z, zs = rows_of(z)
        bsz, length, e = x.shape
        n, blocks = a.shape[1], bounds.shape[1]
        dx, ddt, dz = (torch.empty_like(x) for _ in range(3))
        # Partial sums that tasks write without sharing: over channel blocks (dB, dC), over rows (dA, dD, dbias).
        db_part, dc_part = (x.new_empty(blocks, bsz, length, n) for _ in range(2))
        da_part, dd_part, dbias_part = x.new_empty(bsz, e, n), x.new_empty(bsz, e), x.new_empty(bsz, e)
        dims = [ctypes.c_long(v) for v in (bsz, length, e, n, zs)]
        run_tasks(getattr(lib, f"scan_backward_{suffix(x)}"), bsz * blocks,
                  *map(ptr, (x, dt, a, b, c, d, z, dt_bias, bounds, dout, dx, ddt, dz, da_part, db_part, dc_part,
                             dd_part, dbias_part)), *dims)
        d_dt_low = ddt @ dt_weight
        d_dt_weight = ddt.reshape(-1, e).T @ dt_low.reshape(-1, dt_low.shape[-1])
        return (dx, d_dt_low, d_dt_weight, da_part.sum(0), db_part.sum(0), dc_part.sum(0), dd_part.sum(0), dz,
                dbias_part.sum(0))


def suffix(t: Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


def selective_scan_cpp(x: Tensor, dt_low: Tensor, dt_weight: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor,
                       z: Tensor, dt_bias: Tensor) -> Tensor:
    """(scan(x, softplus(dt_low W^T + dt_bias), A, B, C) + D x) · silu(z) with the compiled kernel, in
    float32 (float64 if x is), returned in x's dtype. Shapes as in CppScan."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return CppScan.apply(*(t.to(dtype) for t in (x, dt_low, dt_weight, a, b, c, d, z, dt_bias))).to(x.dtype)
