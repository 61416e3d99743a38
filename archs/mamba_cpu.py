"""Mamba's selective scan and causal convolution as compiled CPU code (`impl=cpp`): archs/mamba_cpu.cpp,
built on first use by archs/cpu_kernels.py.

Why: the PyTorch scan (archs/mamba.py, `SelectiveScan`) makes ~14 passes over (T, b, n, e)
tensors per chunk, each a separate kernel launch; a loop that keeps the state in registers does the
same arithmetic in one pass, and fuses what surrounds it as mamba-ssm's CUDA kernel does. The
convolution + SiLU in PyTorch is ~10 passes over (b, l, e) forward and backward; compiled, it is one.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from archs.cpu_kernels import library as load
from archs.cpu_kernels import longs, ptr, run_tasks, workers_for
from archs.cpu_kernels import unavailable_reason as reason_for

NAME = "mamba_cpu"


def library() -> ctypes.CDLL:
    lib = load(NAME)
    for fn in (lib.scan_channels_per_task, lib.scan_chunk_steps, lib.conv_channels_per_task):
        fn.restype = ctypes.c_long
    return lib


def unavailable_reason() -> str | None:
    """None if the C++ kernels build and load here, else why not."""
    return reason_for(NAME)


def rows_of(z: Tensor) -> tuple[Tensor, int]:
    """z (b, l, e) as the kernel reads it: channels contiguous, rows a fixed number of elements apart
    (a slice of in_proj's output qualifies without a copy). -> (tensor, row stride)."""
    bsz, length, _ = z.shape
    if z.stride(2) != 1 or z.stride(0) != z.stride(1) * length:
        z = z.contiguous()
    return z, z.stride(1)


class CppScan(torch.autograd.Function):
    """out = (selective_scan(x, softplus(dt_low W^T + dt_bias), A, B, C) + D x) · silu(z), as mamba-ssm's
    dt_proj followed by selective_scan_fn(..., D, z, delta_bias, delta_softplus=True): x, z (b, l, e);
    dt_low (b, l, r), W (e, r); A (e, n); B, C (b, l, n); D, dt_bias (e,) -> out (b, l, e).
    float32 or float64, CPU tensors.

    Saves its inputs and the state at every chunk boundary (n·e·l/64 numbers per row); the backward
    recomputes the states one chunk at a time. dt (b, l, e) never exists as a tensor: the kernel forms
    it a step at a time (a rank-r product is too thin for a fast matrix multiply)."""

    @staticmethod
    def forward(ctx, x, dt_low, dt_weight, a, b, c, d, z, dt_bias):
        lib = library()
        x, dt_low, dt_weight, a, b, c, d, dt_bias = (t.contiguous() for t in (x, dt_low, dt_weight, a, b, c, d, dt_bias))
        z, zs = rows_of(z)
        bsz, length, e = x.shape
        n, r = a.shape[1], dt_low.shape[-1]
        per_task, per_chunk = lib.scan_channels_per_task(), lib.scan_chunk_steps()
        blocks, chunks = -(-e // per_task), -(-length // per_chunk)
        out = torch.empty_like(x)
        bounds = x.new_empty(bsz, blocks, chunks, n, per_task)
        run_tasks(getattr(lib, f"scan_forward_{suffix(x)}"), bsz * blocks,
                  *map(ptr, (x, dt_low, dt_weight, a, b, c, d, z, dt_bias, out, bounds)),
                  *longs(bsz, length, e, n, zs, r))
        ctx.save_for_backward(x, dt_low, dt_weight, a, b, c, d, z, dt_bias, bounds)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dout):
        lib = library()
        x, dt_low, dt_weight, a, b, c, d, z, dt_bias, bounds = ctx.saved_tensors
        dout = dout.contiguous()
        z, zs = rows_of(z)
        bsz, length, e = x.shape
        n, r, blocks = a.shape[1], dt_low.shape[-1], bounds.shape[1]
        dx, dz = torch.empty_like(x), torch.empty_like(x)
        # Partial sums that tasks write without sharing: those over channels (dB, dC, d dt_low) in one
        # (b, l, .) accumulator per worker, which every channel block adds to; dA, dD, dbias, dW per row.
        workers = workers_for(bsz * blocks)
        db_acc, dc_acc = (x.new_zeros(workers, bsz, length, n) for _ in range(2))
        ddt_low_acc = x.new_zeros(workers, bsz, length, r)
        da_part, dw_part = x.new_empty(bsz, e, n), x.new_empty(bsz, e, r)
        dd_part, dbias_part = x.new_empty(bsz, e), x.new_empty(bsz, e)
        run_tasks(getattr(lib, f"scan_backward_{suffix(x)}"), bsz * blocks,
                  *map(ptr, (x, dt_low, dt_weight, a, b, c, d, z, dt_bias, bounds, dout, dx, dz, da_part, dd_part,
                             dbias_part, dw_part)), *longs(bsz, length, e, n, zs, r),
                  per_worker=lambda w: (ptr(db_acc[w]), ptr(dc_acc[w]), ptr(ddt_low_acc[w])))
        return (dx, ddt_low_acc.sum(0), dw_part.sum(0), da_part.sum(0), db_acc.sum(0), dc_acc.sum(0),
                dd_part.sum(0), dz, dbias_part.sum(0))


def suffix(t: Tensor) -> str:
    return "f64" if t.dtype == torch.float64 else "f32"


def selective_scan_cpp(x: Tensor, dt_low: Tensor, dt_weight: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor,
                       z: Tensor, dt_bias: Tensor) -> Tensor:
    """(scan(x, softplus(dt_low W^T + dt_bias), A, B, C) + D x) · silu(z) with the compiled kernel, in
    float32 (float64 if x is), returned in x's dtype. Shapes as in CppScan."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return CppScan.apply(*(t.to(dtype) for t in (x, dt_low, dt_weight, a, b, c, d, z, dt_bias))).to(x.dtype)


class CppConvSiLU(torch.autograd.Function):
    """silu(causal depthwise conv1d(x)), as archs/mamba.py's CausalConvSiLU: x (b, l, e), which may be a
    view with rows a fixed stride apart; weight (e, 1, k); bias (e,) -> (b, l, e). float32 or float64
    CPU tensors, all of one dtype. Keeps only its inputs; the backward recomputes the convolution."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        lib = library()
        ctx.save_for_backward(x, weight, bias)
        x, xs = rows_of(x)
        bsz, length, e = x.shape
        out = x.new_empty(bsz, length, e)
        run_tasks(getattr(lib, f"conv_forward_{suffix(x)}"), bsz * -(-e // lib.conv_channels_per_task()),
                  ptr(x), ctypes.c_long(xs), *map(ptr, (weight.contiguous(), bias.contiguous(), out)),
                  *longs(bsz, length, e, weight.shape[-1]))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        lib = library()
        x, weight, bias = ctx.saved_tensors
        x, xs = rows_of(x)
        bsz, length, e = x.shape
        dx, dw_part, dbias_part = x.new_empty(bsz, length, e), x.new_empty(bsz, *weight.shape), x.new_empty(bsz, e)
        run_tasks(getattr(lib, f"conv_backward_{suffix(x)}"), bsz * -(-e // lib.conv_channels_per_task()),
                  ptr(x), ctypes.c_long(xs),
                  *map(ptr, (weight.contiguous(), bias.contiguous(), dy.contiguous(), dx, dw_part, dbias_part)),
                  *longs(bsz, length, e, weight.shape[-1]))
        return dx, dw_part.sum(0), dbias_part.sum(0)


def conv_silu_cpp(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """silu(causal depthwise conv1d(x)) with the compiled kernel, in float32 (float64 if x is), returned
    in x's dtype. Shapes as in CppConvSiLU."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return CppConvSiLU.apply(*(t.to(dtype) for t in (x, weight, bias))).to(x.dtype)
