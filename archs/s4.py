"""S4: the structured state-space layer with a diagonal-plus-low-rank (DPLR) state matrix
(Gu, Goel & Ré 2022, "Efficiently Modeling Long Sequences with Structured State Spaces").

Glossary as in archs/ssm.py; ω_k = exp(-2πi k / M) are the M-th roots of unity, M = kernel length.

Per channel, A = Λ - P P^* with Λ diagonal (N/2 conjugate pairs stored) and P a rank-1 vector,
initialized from HiPPO-LegS's normal-plus-low-rank form; bilinear discretization with step dt:
    Ā = (I - dt/2 A)^{-1} (I + dt/2 A),   B̄ = (I - dt/2 A)^{-1} dt B,   K_l = C Ā^l B̄.
Like the paper we learn C̃ = C (I - Ā^M) instead of C, which makes the kernel's generating
function at the roots of unity cheap (paper, Lemma C.3 with the Woodbury identity):
    K̂(ω) = C̃ M(ω) B,  M(ω) = 2 [ (2/dt)(1-ω) - (1+ω) A ]^{-1}
         = k_CB - (1+ω)/2 · k_CP k_PB / (1 + (1+ω)/2 · k_PP),
    k_ab(ω) = sum_n a_n b_n · 2 / ((2/dt)(1-ω) - (1+ω) Λ_n)      (a Cauchy kernel)
and K = inverse FFT of K̂. Writing 2/(1+ω) into the denominator keeps ω = -1 finite. Because C̃
is tied to M, the kernel is always computed at M = max_len and cut to the batch's length: a short
batch sees exactly the first L taps a long one sees.

The Cauchy sums are the cost, O(H · N · M) per step whatever the batch. `impl` picks how:
- `cpp`: archs/s4_cauchy.cpp, compiled on first use (archs/cpu_kernels.py), CPU tensors; makes
  each reciprocal in registers (the authors use a CUDA or KeOps kernel for the same reason);
- `torch`: plain PyTorch, any device; holds H × N/2 × M/2 complex numbers per layer;
- `auto`: `cpp` for CPU tensors when it builds, else `torch`.

`n_ssm` (state-spaces/s4's option of the same name): how many distinct (Λ, P, B) the H channels
share, each used by H / n_ssm consecutive channels; null = one per channel. The S4 LRA configs use 1
for ListOps, Text, Retrieval and Image, which at d_state 64 and d_model 512 is 16% fewer parameters.
Step sizes and C stay per channel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from archs import cpu_kernels
from archs.base import check_length
from archs.ssm import SSMStack, hippo_legs_nplr, log_dt_init, ssm_param

IMPLS = ("auto", "cpp", "torch")
KERNEL = "s4_cauchy"


def cauchy_pairs(v: Tensor, z_num: Tensor, z_den: Tensor, lam: Tensor) -> Tensor:
    """sum over n of v_n · 2 / (z_num - z_den λ_n) over conjugate pairs, i.e. over the full state:
    + conj(v_n) · 2 / (z_num - z_den conj(λ_n)).  v (V, H, N/2), z_* (M',), lam (H, N/2) -> (V, H, M').
    The (H, N/2, M') reciprocals, not the sums, are the cost: all V numerators share one pair."""
    r = 2 / (z_num - z_den * lam[..., None])  # (H, N/2, M')
    r_conj = 2 / (z_num - z_den * lam.conj()[..., None])
    return torch.einsum("vhn,hnm->vhm", v, r) + torch.einsum("vhn,hnm->vhm", v.conj(), r_conj)


class CppCauchy(torch.autograd.Function):
    """cauchy_pairs with the compiled kernel: v (V, H, N/2), lam (H, N/2) complex64/128 CPU tensors, the
    kernel length m -> (V, H, m//2 + 1). Keeps only its inputs; the backward remakes the reciprocals."""

    @staticmethod
    def forward(ctx, v, lam, m: int):
        lib = cpu_kernels.library(KERNEL)
        real = torch.float64 if v.dtype == torch.complex128 else torch.float32
        vr, vi, lr, li = (t.to(real).contiguous() for t in (v.real, v.imag, lam.real, lam.imag))
        (nv, h, n2), freqs = v.shape, m // 2 + 1
        out_r, out_i = vr.new_empty(nv, h, freqs), vr.new_empty(nv, h, freqs)
        cpu_kernels.run_tasks(getattr(lib, f"cauchy_forward_{suffix(real)}"), h,
                              *map(cpu_kernels.ptr, (vr, vi, lr, li, out_r, out_i)), *cpu_kernels.longs(nv, h, n2, m))
        ctx.save_for_backward(vr, vi, lr, li)
        ctx.m = m
        return torch.complex(out_r, out_i)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        lib = cpu_kernels.library(KERNEL)
        vr, vi, lr, li = ctx.saved_tensors
        gr, gi = (t.to(vr.dtype).contiguous() for t in (grad.real, grad.imag))
        gvr, gvi, glr, gli = (torch.empty_like(t) for t in (vr, vi, lr, li))
        nv, h, n2 = vr.shape
        cpu_kernels.run_tasks(getattr(lib, f"cauchy_backward_{suffix(vr.dtype)}"), h,
                              *map(cpu_kernels.ptr, (vr, vi, lr, li, gr, gi, gvr, gvi, glr, gli)),
                              *cpu_kernels.longs(nv, h, n2, ctx.m))
        return torch.complex(gvr, gvi), torch.complex(glr, gli), None


def suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


class S4Kernel(nn.Module):
    """length L (<= max_len) -> kernels (c, H, L), computed at max_len and cut."""

    def __init__(self, d_model: int, channels: int, d_state: int, max_len: int, dt_min: float, dt_max: float,
                 ssm_lr: float | None, impl: str = "torch", used: set | None = None, n_ssm: int | None = None):
        super().__init__()
        lam, p, b = hippo_legs_nplr(d_state)
        self.max_len, self.impl = max_len, impl
        self.used = set() if used is None else used  # implementations that ran (shared with the S4 stack)
        n_ssm = d_model if n_ssm is None else n_ssm
        self.share = d_model // n_ssm  # channels per (Λ, P, B)
        rep = (n_ssm, 1)
        self.log_dt = ssm_param(log_dt_init(d_model, dt_min, dt_max), ssm_lr)  # (H)
        self.log_A_real = ssm_param(torch.log(-lam.real).float().repeat(*rep), ssm_lr)  # (S, N/2), Re Λ < 0
        self.A_imag = ssm_param(lam.imag.float().repeat(*rep), ssm_lr)  # (S, N/2), S = n_ssm
        self.P = ssm_param(torch.view_as_real(p.to(torch.complex64)).repeat(*rep, 1), ssm_lr)  # (S, N/2, 2)
        self.B = ssm_param(torch.view_as_real(b.to(torch.complex64)).repeat(*rep, 1), ssm_lr)  # (S, N/2, 2)
        # C̃ ~ N(0, 1/2) per real and imaginary part, one per direction.
        c = torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64)
        self.C = nn.Parameter(torch.view_as_real(c))  # (c, H, N/2, 2)

    def per_channel(self, x: Tensor) -> Tensor:
        """(S, ...) -> (H, ...): each of the n_ssm rows serves `share` consecutive channels."""
        return x if self.share == 1 else x.repeat_interleave(self.share, dim=0)

    def lam(self) -> Tensor:
        return self.per_channel(torch.complex(-self.log_A_real.exp(), self.A_imag))  # (H, N/2)

    def forward(self, length: int) -> Tensor:
        check_length(length, self.max_len)
        m = self.max_len
        dt = self.log_dt.exp()[:, None]  # (H, 1)
        lam = self.lam()
        p, b = (self.per_channel(torch.view_as_complex(t)) for t in (self.P, self.B))  # (H, N/2) each
        c = torch.view_as_complex(self.C)  # (c, H, N/2)
        k = torch.arange(m // 2 + 1, device=dt.device, dtype=torch.float64)
        omega = torch.exp(-2j * math.pi * k / m).to(lam.dtype)  # (M/2+1): rfft frequencies suffice, K is real
        # 2 / ((2/dt)(1-ω) - (1+ω)λ) = dt · 2 / (2(1-ω) - (1+ω) dt λ): fold each channel's dt into λ.
        lam_dt, z_num, z_den = lam * dt, 2 * (1 - omega), 1 + omega
        channels = c.shape[0]
        numerators = torch.cat([c * b, c * p, (p.conj() * b)[None], (p.conj() * p)[None]])  # (2c + 2, H, N/2)
        if self.cauchy_impl(dt) == "cpp":
            sums = CppCauchy.apply(numerators, lam_dt, m)
        else:
            sums = cauchy_pairs(numerators, z_num, z_den, lam_dt)
        k_cb, k_cp, k_pb, k_pp = (sums * dt).split([channels, channels, 1, 1])
        half = (1 + omega) / 2
        k_hat = k_cb - half * k_cp * k_pb / (1 + half * k_pp)  # (c, H, M/2+1)
        return torch.fft.irfft(k_hat, n=m)[..., :length]

    def cauchy_impl(self, like: Tensor) -> str:
        """"cpp" or "torch" for parameters on like's device, recorded in `used`."""
        if self.impl == "cpp" and like.is_cuda:
            raise ValueError("impl=cpp is the CPU kernel but the model is on CUDA: set impl=torch or auto")
        cpp = self.impl == "cpp" or (self.impl == "auto" and not like.is_cuda
                                     and cpu_kernels.unavailable_reason(KERNEL) is None)
        self.used.add("cpp" if cpp else "torch")
        return "cpp" if cpp else "torch"


class S4(SSMStack):
    """(B, L, D) -> (B, L, D): a stack of S4 (DPLR, HiPPO-LegS) blocks; bidirectional by default."""

    def __init__(self, d_model: int, n_layers: int, dropout: float = 0.0, *, max_len: int, d_state: int = 64,
                 bidirectional: bool = True, dt_min: float = 0.001, dt_max: float = 0.1,
                 ssm_lr: float | None = 0.001, impl: str = "auto", n_ssm: int | None = None):
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")
        if n_ssm is not None and (isinstance(n_ssm, bool) or not isinstance(n_ssm, int) or n_ssm <= 0
                                  or d_model % n_ssm):
            raise ValueError(f"n_ssm={n_ssm!r} must be a positive divisor of d_model={d_model}, "
                             "or null (one per channel)")
        self.n_ssm = n_ssm
        if impl == "cpp" and (reason := cpu_kernels.unavailable_reason(KERNEL)):
            raise ValueError(f"impl=cpp: {reason}; or use impl=torch")
        self.impl_requested, self.used = impl, set()  # read by make_kernel, during super().__init__
        super().__init__(d_model, n_layers, dropout, max_len=max_len, d_state=d_state, bidirectional=bidirectional,
                         dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr)

    @property
    def impl(self) -> str:
        """What computed the Cauchy sums ("cpp", "torch", or "cpp+torch"); before any forward, what
        would on the CPU."""
        if self.used:
            return "+".join(sorted(self.used))
        auto_cpp = self.impl_requested == "auto" and cpu_kernels.unavailable_reason(KERNEL) is None
        return "cpp" if self.impl_requested == "cpp" or auto_cpp else "torch"

    def make_kernel(self, d_model: int, channels: int) -> nn.Module:
        return S4Kernel(d_model, channels, self.d_state, self.max_len, self.dt_min, self.dt_max, self.ssm_lr,
                        self.impl_requested, self.used, self.n_ssm)
