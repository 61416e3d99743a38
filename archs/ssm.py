"""What S4 and S4D share: HiPPO initialization, FFT convolution, the residual block and the stack.

Glossary: B batch, L length, H = d_model channels (one independent SSM per channel), N state size
(d_state; complex states come in conjugate pairs, so N/2 are stored), c kernel channels (1, or 2
when bidirectional: one kernel per direction).

A linear time-invariant SSM x' = A x + B u, y = C x + D u, once discretized with step dt, is a
convolution y = K * u + D u with K_l = C Ā^l B̄. S4 and S4D differ only in how they parametrize
A and compute K; everything around the kernel is here, written once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.base import Backbone, check_dropout, check_length, check_positive


def hippo_legs(n: int) -> tuple[Tensor, Tensor]:
    """HiPPO-LegS (Gu et al. 2020), float64: A (n, n) with A_nk = -sqrt(2n+1)sqrt(2k+1) for n > k,
    -(n+1) on the diagonal, 0 above; B (n,) with B_n = sqrt(2n+1)."""
    q = torch.sqrt(2 * torch.arange(n, dtype=torch.float64) + 1)
    a = -(q[:, None] * q[None, :]).tril(-1) - torch.diag(torch.arange(n, dtype=torch.float64) + 1)
    return a, q.clone()


def hippo_legs_nplr(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Normal-plus-low-rank form of HiPPO-LegS (S4 paper, section 3.3), diagonalized.

    A = V (Λ - p̃ p̃^*) V^*: A + p p^T with p_n = sqrt(n + 1/2) is -1/2 I plus a skew-symmetric
    matrix, hence unitarily diagonalizable with eigenvalues -1/2 + i w. Eigenvalues come in
    conjugate pairs; we keep the n/2 with w > 0 and their vectors. Returns (Λ, p̃, b̃), each (n/2,)
    complex128, with p̃ = V^* p and b̃ = V^* B.
    """
    if n % 2:
        raise ValueError(f"d_state={n} must be even (complex states come in conjugate pairs)")
    a, b = hippo_legs(n)
    p = torch.sqrt(torch.arange(n, dtype=torch.float64) + 0.5)
    skew = a + p[:, None] * p[None, :] + 0.5 * torch.eye(n, dtype=torch.float64)
    w, v = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # -i * skew is Hermitian: skew = V (i w) V^*
    keep = torch.argsort(w, descending=True)[: n // 2]  # the w > 0 half; the rest are their conjugates
    w, v = w[keep], v[:, keep]
    lam = -0.5 + 1j * w.to(torch.complex128)
    vh = v.conj().T
    return lam, vh @ p.to(torch.complex128), vh @ b.to(torch.complex128)


def ssm_param(value: Tensor, lr: float | None) -> nn.Parameter:
    """A parameter of the SSM dynamics (A, dt, and S4's B, P). These are sensitive: S4 trains them
    with a smaller learning rate and never decays them (decay would pull A toward instability).
    The training loop reads `_optim` when it builds its parameter groups."""
    param = nn.Parameter(value)
    param._optim = {"weight_decay": 0.0, **({} if lr is None else {"lr": lr})}
    return param


def log_dt_init(h: int, dt_min: float, dt_max: float) -> Tensor:
    """(h,) log step sizes, uniform in [log dt_min, log dt_max]: channels see different time scales."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    return torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def fft_conv(u: Tensor, k: Tensor) -> Tensor:
    """u (B, H, L), k (c, H, L) -> (B, H, L), computed with FFTs of length 2L (no wrap-around).

    c = 1: causal, y_l = sum_{j<=l} k_j u_{l-j}.
    c = 2: bidirectional, k[0] over the past and present, k[1] over the future:
    y_l = sum_{j<=l} k0_j u_{l-j} + sum_{d>=1} k1_{d-1} u_{l+d}. Placing k[1] reversed at the end
    of a length-2L kernel makes one circular convolution compute both.
    """
    length = u.shape[-1]
    if k.shape[0] == 2:
        kernel = F.pad(k[0], (0, length)) + F.pad(k[1].flip(-1), (length, 0))
    else:
        kernel = k[0]
    n = 2 * length
    work = torch.float64 if u.dtype == torch.float64 else torch.float32  # FFTs in half precision lose the tail
    y = torch.fft.irfft(torch.fft.rfft(u.to(work), n=n) * torch.fft.rfft(kernel.to(work), n=n), n=n)
    return y[..., :length].to(u.dtype)


class SSMConv(nn.Module):
    """(B, H, L) -> (B, H, L): y = K * u + D u, K from `kernel(L)` of shape (c, H, L)."""

    def __init__(self, kernel: nn.Module, d_model: int):
        super().__init__()
        self.kernel = kernel
        self.D = nn.Parameter(torch.randn(d_model))  # skip connection, as in S4

    def forward(self, u: Tensor) -> Tensor:
        return fft_conv(u, self.kernel(u.shape[-1])) + u * self.D[:, None]


class SSMBlock(nn.Module):
    """x + Dropout(GLU(Linear(Dropout(GELU(SSM(LN(x))))))), the S4 block with pre-LayerNorm.

    LayerNorm, not the BatchNorm some S4 configs use: batch statistics would mix padded positions
    of one example into the others'.
    """

    def __init__(self, conv: SSMConv, d_model: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.conv = conv
        self.out = nn.Linear(d_model, 2 * d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, L, H), mask (B, L) or None."""
        u = self.norm(x)
        if mask is not None:  # zero the padding: a bidirectional kernel would carry it backwards
            u = u * mask[..., None]
        # GELU in the convolution's (B, H, L) layout, then transposed: the same numbers, but its backward
        # on a transposed view ran 4x slower (a quarter of an S4D step on CPU).
        y = self.drop(F.gelu(self.conv(u.transpose(1, 2))).transpose(1, 2))
        return x + self.drop(F.glu(self.out(y), dim=-1))


class SSMStack(Backbone):
    """(B, L, D) -> (B, L, D): n_layers SSM blocks and a final LayerNorm. Subclasses supply
    `make_kernel(d_model, channels)`, a module mapping a length L to kernels (channels, D, L)."""

    impl = "torch"

    def __init__(self, d_model: int, n_layers: int, dropout: float, *, max_len: int, d_state: int,
                 bidirectional: bool, dt_min: float, dt_max: float, ssm_lr: float | None):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("max_len", max_len),
                            ("d_state", d_state)):
            check_positive(name, value)
        check_dropout(dropout)
        if d_state % 2:
            raise ValueError(f"d_state={d_state} must be even (complex states come in conjugate pairs)")
        if ssm_lr is not None and not ssm_lr > 0:
            raise ValueError(f"ssm_lr={ssm_lr!r} must be positive, or null to use the optimizer's lr")
        self.causal, self.max_len = not bidirectional, max_len
        self.d_state, self.dt_min, self.dt_max, self.ssm_lr = d_state, dt_min, dt_max, ssm_lr
        channels = 2 if bidirectional else 1
        self.blocks = nn.ModuleList(
            SSMBlock(SSMConv(self.make_kernel(d_model, channels), d_model), d_model, dropout) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def make_kernel(self, d_model: int, channels: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = real -> (B, L, D)."""
        check_length(x.shape[1], self.max_len)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
