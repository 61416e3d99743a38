"""Model FLOPs of a training step, right on every device: torch's flop counter plus what it misses.

torch.utils.flop_counter counts matmuls, convolutions and the CUDA attention kernels. It has no
formula for the CPU attention kernel (`_scaled_dot_product_flash_attention_for_cpu`, forward and
backward) nor for FFTs, and it cannot see inside our compiled C++ kernels or count the elementwise
recurrence of the PyTorch scan. `counter()` adds formulas for the first two; `uncounted_flops`
gives the last two in closed form from the model's modules.

Conventions (model FLOPs, not hardware FLOPs):
- a multiply-add is 2 FLOPs; attention counts the full L x L score matrix even when causal (as the
  counter does for the CUDA kernels), its backward 5 matmuls (scores recomputed, dV, dP, dQ, dK);
- an FFT of n complex points is 5 n log2 n FLOPs, of n real points (either direction) half that;
- elementwise work (norms, activations, the optimizer) is not counted, except the state update of
  Mamba's selective scan, which is its main cost: 7 FLOPs per (token, channel, state) forward
  (Δ·A, its exp, Δx·B, Ā·h + B̄x, C·h summed), and the depthwise convolution, 2 k per (token,
  channel); a backward costs twice its forward, recomputation is not counted;
- S4's Cauchy sums (impl=cpp) are not counted: their cost is per step, not per token, and small
  next to the rest at the lengths the bench runs.
"""

from __future__ import annotations

import math

import torch
from torch.utils import flop_counter as fc

aten = torch.ops.aten


def _sdpa_cpu(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """Shapes (B, H, L, E) of the CPU kernel's query, key, value."""
    return fc.sdpa_flop_count(query, key, value)


def _sdpa_cpu_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def fft_flops(shape, dim, real: bool) -> int:
    """An FFT over dims `dim` of a tensor of `shape` (the real side's shape for a real FFT):
    5 n log2 n per complex transform of n = prod(shape[dim]) points, half that for a real one."""
    n = math.prod(shape[d] for d in dim)
    batch = math.prod(shape) // n
    return round(batch * (2.5 if real else 5) * n * math.log2(n)) if n > 1 else 0


def _fft_r2c(x, dim, *args, out_shape=None, **kwargs) -> int:
    return fft_flops(x, dim, real=True)


def _fft_c2r(x, dim, *args, out_shape=None, **kwargs) -> int:
    return fft_flops(out_shape, dim, real=True)  # the real output's shape holds the transform's length


def _fft_c2c(x, dim, *args, out_shape=None, **kwargs) -> int:
    return fft_flops(x, dim, real=False)


MISSING = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu,
           aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
           aten._fft_r2c: _fft_r2c, aten._fft_c2r: _fft_c2r, aten._fft_c2c: _fft_c2c}


def counter() -> fc.FlopCounterMode:
    """A FlopCounterMode that also counts CPU attention and FFTs (formulas above)."""
    return fc.FlopCounterMode(display=False, custom_mapping=MISSING)


def uncounted_flops(model: torch.nn.Module, batch: int, length: int, backward: bool = True) -> int:
    """FLOPs of a forward (and backward) on (batch, length) that no dispatched op shows: Mamba's scan and
    depthwise convolution, and with impl=cpp its dt_proj (the kernel forms Δ = dt_low W^T itself)."""
    from archs.mamba import Mamba

    if not isinstance(model, Mamba):
        return 0
    tokens, total = batch * length, 0
    cpp = model.impl == "cpp"
    for block in model.blocks:
        for mixer in (block.mixer, block.mixer_rev):
            if mixer is None:
                continue
            e, n = mixer.A_log.shape
            k, r = mixer.conv1d.weight.shape[-1], mixer.dt_rank
            total += tokens * (7 * e * n + 2 * k * e + (2 * r * e if cpp else 0))
    return total * (3 if backward else 1)
