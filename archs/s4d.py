"""S4D: the diagonal state-space layer (Gu, Gupta, Goel & Ré 2022, "On the Parameterization and
Initialization of Diagonal State Space Models").

Per channel h, a diagonal complex A (N/2 conjugate pairs), step dt, zero-order hold:
    Ā = exp(dt A),  B̄ = (exp(dt A) - 1) / A · B,   K_l = 2 Re( sum_n C_n B̄_n Ā_n^l )
The sum over n of C B̄ times the Vandermonde matrix Ā_n^l is the whole kernel (section 3.2 of
the paper); B is folded into C, as in the paper's minimal S4D. The convolution, block and stack
are shared with S4 (archs/ssm.py).

Initializations of A (paper, section 4):
- `lin`:  A_n = -1/2 + i π n                    (S4D-Lin)
- `inv`:  A_n = -1/2 + i N/π (N/(2n+1) - 1)     (S4D-Inv)
- `legs`: A = the diagonal part of HiPPO-LegS's normal-plus-low-rank form, and C scaled by its B
  (S4D-LegS).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from archs.ssm import SSMStack, hippo_legs_nplr, log_dt_init, ssm_param

INITS = ("lin", "inv", "legs")


def init_a(init: str, n_half: int, d_state: int) -> tuple[Tensor, Tensor]:
    """-> (A (n_half,) complex, B-scale (n_half,) complex) for one channel."""
    n = torch.arange(n_half, dtype=torch.float64)
    if init == "lin":
        return -0.5 + 1j * math.pi * n, torch.ones(n_half, dtype=torch.complex128)
    if init == "inv":
        return -0.5 + 1j * d_state / math.pi * (d_state / (2 * n + 1) - 1), torch.ones(n_half, dtype=torch.complex128)
    lam, _, b = hippo_legs_nplr(d_state)
    return lam, b


class S4DKernel(nn.Module):
    """length L -> kernels (c, H, L), c = 1 (causal) or 2 (bidirectional: one per direction)."""

    def __init__(self, d_model: int, channels: int, d_state: int, init: str, dt_min: float, dt_max: float,
                 ssm_lr: float | None):
        super().__init__()
        a, b = init_a(init, d_state // 2, d_state)
        self.log_dt = ssm_param(log_dt_init(d_model, dt_min, dt_max), ssm_lr)  # (H)
        # Re A < 0 always (a stable system): stored as log(-Re A).
        self.log_A_real = ssm_param(torch.log(-a.real).float().repeat(d_model, 1), ssm_lr)  # (H, N/2)
        self.A_imag = ssm_param(a.imag.float().repeat(d_model, 1), ssm_lr)  # (H, N/2)
        c = torch.randn(channels, d_model, d_state // 2, dtype=torch.complex64) * b.to(torch.complex64)
        self.C = nn.Parameter(torch.view_as_real(c))  # (c, H, N/2, 2): real storage, optimizers see floats

    def forward(self, length: int) -> Tensor:
        dt = self.log_dt.exp()  # (H)
        a = torch.complex(-self.log_A_real.exp(), self.A_imag)  # (H, N/2)
        dta = a * dt[:, None]
        c = torch.view_as_complex(self.C) * (dta.exp() - 1) / a  # (c, H, N/2): C B̄ with B = 1
        # Ā^l with l = q·T + r is Ā^(qT) · Ā^r: two small tables of exponentials (H, N/2, ~sqrt L) and a
        # matrix product over n, instead of exp, cos and sin over a (H, N/2, L) Vandermonde matrix —
        # which made kernel generation, not the convolution, dominate at L = 4096.
        t = max(1, math.isqrt(length - 1) + 1)  # ceil(sqrt(L)) columns; q rows
        q = -(-length // t)
        rows = torch.exp(dta[..., None] * (t * torch.arange(q, device=dt.device, dtype=dt.dtype)))  # (H, N/2, q)
        cols = torch.exp(dta[..., None] * torch.arange(t, device=dt.device, dtype=dt.dtype))  # (H, N/2, t)
        left = (c[..., None] * rows).permute(1, 0, 3, 2).reshape(dt.shape[0], -1, c.shape[-1])  # (H, c·q, N/2)
        k = torch.bmm(left.real, cols.real) - torch.bmm(left.imag, cols.imag)  # 2 Re(.) / 2: (H, c·q, t)
        return 2 * k.reshape(dt.shape[0], c.shape[0], q * t)[..., :length].transpose(0, 1)


class S4D(SSMStack):
    """(B, L, D) -> (B, L, D): a stack of S4D blocks; bidirectional unless `bidirectional=false`."""

    def __init__(self, d_model: int, n_layers: int, dropout: float = 0.0, *, max_len: int, d_state: int = 64,
                 init: str = "inv", bidirectional: bool = True, dt_min: float = 0.001, dt_max: float = 0.1,
                 ssm_lr: float | None = 0.001):
        if init not in INITS:
            raise ValueError(f"init={init!r} is not one of {', '.join(INITS)}")
        self.init = init
        super().__init__(d_model, n_layers, dropout, max_len=max_len, d_state=d_state, bidirectional=bidirectional,
                         dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr)

    def make_kernel(self, d_model: int, channels: int) -> nn.Module:
        return S4DKernel(d_model, channels, self.d_state, self.init, self.dt_min, self.dt_max, self.ssm_lr)
