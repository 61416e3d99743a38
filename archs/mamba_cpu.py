"""Mamba's selective scan as compiled CPU code (`impl=cpp`): archs/mamba_scan.cpp, built on first use
by archs/cpu_kernels.py.

Why: the PyTorch scan (archs/mamba.py, `SelectiveScan`) makes ~14 passes over (T, b, n, e)
tensors per chunk, each a separate kernel launch; a loop that keeps the state in registers does the
same arithmetic in one pass, and fuses what surrounds it as mamba-ssm's CUDA kernel does.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from archs.cpu_kernels import library as load
from archs.cpu_kernels import longs, ptr, run_tasks
from archs.cpu_kernels import unavailable_reason as reason_for

NAME = "mamba_scan"


def library() -> ctypes.CDLL:
    lib = load(NAME)
    lib.scan_channels_per_task.restype = lib.scan_chunk_steps.restype = ctypes.c_long
    return lib


def unavailable_reason() -> str | None:
    """None if the C++ scan works here, else why not."""
    return reason_for(NAME)


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
        dims = longs(bsz, length, e, n, zs)
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
        dims = longs(bsz, length, e, n, zs)
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
