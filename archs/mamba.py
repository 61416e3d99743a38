"""Mamba: selective state-space blocks (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), with mamba-ssm's fused CUDA kernels or a pure-PyTorch scan.

Glossary (paper symbol in brackets): b batch, l length, d d_model, e = expand · d inner width
(d_inner), n d_state [N], r dt_rank, Δ step sizes (delta), A (e, n) diagonal state matrix,
B, C (b, l, n) input-dependent input/output maps, D (e,) skip.

One mixer (`MambaMixer`, section 3.4 and Figure 3 of the paper):
    x, z = in_proj(u)                          (b, l, e) each
    x = SiLU(causal depthwise conv1d(x))
    Δ, B, C = split(x_proj(x));  Δ = softplus(dt_proj(Δ))         (Algorithm 2: s_B, s_C, s_Δ)
    h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t;  y_t = C_t h_t + D x_t   (zero-order hold of A, Euler for B)
    out = out_proj(y · SiLU(z))
Parameter names and shapes equal `mamba_ssm.Mamba`'s (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj), so weights move between this file and mamba-ssm unchanged.

Implementation (`impl`), the same parameters and the same results for each:
- `cuda`: mamba-ssm's fused `selective_scan_fn` (CUDA tensors);
- `cpp`: the compiled CPU scan and convolution of archs/mamba_cpu.py (built on first use with the
  system's C++ compiler; several times faster than `torch`);
- `torch`: `SelectiveScan` below, pure PyTorch, any device;
- `auto`: `cuda` for CUDA tensors when mamba-ssm is installed, `cpp` for CPU tensors when it
  builds, else `torch` (the reason is logged once).
`cuda` or `cpp` where it cannot run is an error, never a fallback. The backbone's `impl` reports
what actually ran (it goes into result.json).

The PyTorch scan is a custom autograd function: autograd through a per-step loop would keep
l graph nodes and l states of size (b, e, n) alive — gigabytes at l = 2048. Instead the forward
scans chunk by chunk without a graph, keeping only the state at each chunk boundary; the backward
recomputes one chunk's states from its boundary and runs the adjoint scan in reverse.

`bidirectional` (for classification and masked-token pretraining): a second mixer reads each
sequence reversed *within its real length* — padding stays on the right, so it never leaks into
real positions in either direction — and the two outputs are summed. `tie_projections` shares
in_proj and out_proj between the two directions, as Caduceus's BiMamba does by default (Schiff et al.
2024, "bidirectional_weight_tie": the projections hold most of the parameters); each direction keeps
its own conv1d, x_proj, dt_proj, A and D. Both projections act on each position alone, so the shared
in_proj and out_proj are computed once for both directions.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from archs import mamba_cpu
from archs.base import Backbone, check_dropout, check_length, check_positive

IMPLS = ("auto", "cuda", "cpp", "torch")
log = logging.getLogger(__name__)


LOG2E = 1.4426950408889634


class SelectiveScan(torch.autograd.Function):
    """y = selective_scan(u, Δ, A, B, C): u, Δ (b, l, e); A (e, n); B, C (b, l, n) -> y (b, l, e).
    No D, no gate: those stay in ordinary autograd around it.

    Inside, a chunk of T steps lives in preallocated (T, b, n, e) buffers: e last so that sums over
    n (and over e) are fast contiguous reductions, and reused buffers because allocating fresh
    megabyte tensors (page faults) costs more than the arithmetic. exp(x) is computed as
    exp2(x · log2 e), several times faster on CPU.
    """

    @staticmethod
    def forward(ctx, u, delta, a, b, c, chunk: int):
        bsz, length, e = u.shape
        a2 = (a * LOG2E).T.contiguous()  # (n, e)
        y = u.new_empty(bsz, length, e)
        bufs = [u.new_empty(min(chunk, length), bsz, a.shape[1], e) for _ in range(3)]
        h = u.new_zeros(bsz, a.shape[1], e)
        boundaries = []  # the state entering each chunk: all the backward needs besides the inputs
        for t0 in range(0, length, chunk):
            sl = slice(t0, t0 + chunk)
            boundaries.append(h)
            da, hs, tmp = (buf[: min(chunk, length - t0)] for buf in bufs)
            _states(u[:, sl], delta[:, sl], a2, b[:, sl], h, da, hs)
            y[:, sl] = torch.mul(hs, c[:, sl].transpose(0, 1)[..., None], out=tmp).sum(2).transpose(0, 1)
            h = hs[-1].clone()  # the buffers are overwritten by the next chunk
        ctx.save_for_backward(u, delta, a, b, c, torch.stack(boundaries))
        ctx.chunk = chunk
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        u, delta, a, b, c, boundaries = ctx.saved_tensors
        chunk, (bsz, length, e) = ctx.chunk, u.shape
        a2, a_t = (a * LOG2E).T.contiguous(), a.T.contiguous()  # (n, e)
        du, ddelta, db, dc = (torch.empty_like(t) for t in (u, delta, b, c))
        da_t = torch.zeros_like(a_t)  # (n, e)
        bufs = [u.new_empty(min(chunk, length), bsz, a.shape[1], e) for _ in range(5)]
        carry = torch.zeros_like(boundaries[0])  # dL/dh from the chunk after this one, through its first Ā
        for k in reversed(range(len(boundaries))):
            sl = slice(k * chunk, min((k + 1) * chunk, length))
            da, hs, g, g_dta, tmp = (buf[: sl.stop - sl.start] for buf in bufs)
            h0 = boundaries[k]
            _states(u[:, sl], delta[:, sl], a2, b[:, sl], h0, da, hs)  # recompute this chunk's states
            u_k, delta_k, b_k, c_k, dy_k = (t[:, sl].transpose(0, 1) for t in (u, delta, b, c, dy))  # (T, b, .)
            dc[:, sl] = torch.mul(hs, dy_k[:, :, None, :], out=tmp).sum(-1).transpose(0, 1)
            # g_t = dL/dh_t = C_t dy_t + Ā_{t+1} g_{t+1}: the adjoint scan, run backwards.
            torch.mul(dy_k[:, :, None, :], c_k[..., None], out=g)
            g[-1] += carry
            for t in range(g.shape[0] - 2, -1, -1):
                torch.addcmul(g[t], da[t + 1], g[t + 1], out=g[t])
            carry = da[0] * g[0]
            # Ā_t = exp(Δ_t A): dL/d(Δ_t A) = g_t h_{t-1} Ā_t.
            torch.mul(g, da, out=g_dta)
            g_dta[1:].mul_(hs[:-1])
            g_dta[0].mul_(h0)
            ddelta_k = torch.mul(g_dta, a_t, out=tmp).sum(2)  # (T, b, e)
            da_t += torch.mul(g_dta, delta_k[:, :, None, :], out=tmp).sum((0, 1))
            # B̄x_t = Δ_t x_t B_t
            g_dx = torch.mul(g, b_k[..., None], out=tmp).sum(2)  # dL/d(Δ_t x_t), (T, b, e)
            db[:, sl] = torch.mul(g, (delta_k * u_k)[:, :, None, :], out=tmp).sum(-1).transpose(0, 1)
            ddelta[:, sl] = (ddelta_k + g_dx * u_k).transpose(0, 1)
            du[:, sl] = (g_dx * delta_k).transpose(0, 1)
        return du, ddelta, da_t.T, db, dc, None


def _states(u: Tensor, delta: Tensor, a2: Tensor, b: Tensor, h: Tensor, da: Tensor, hs: Tensor) -> None:
    """One chunk of the recurrence, into buffers. u, delta (b, T, e); a2 = A·log2(e) transposed (n, e);
    b (b, T, n); h (b, n, e) the state before the chunk. Writes da = Ā_t = exp(Δ_t A) and
    hs = h_t = Ā_t h_{t-1} + Δ_t x_t B_t, both (T, b, n, e)."""
    u, delta, b = u.transpose(0, 1), delta.transpose(0, 1), b.transpose(0, 1)
    torch.exp2(torch.mul(delta[:, :, None, :], a2, out=da), out=da)
    torch.mul((delta * u)[:, :, None, :], b[..., None], out=hs)  # B̄x_t, turned into h_t in place below
    for t in range(hs.shape[0]):
        h = torch.addcmul(hs[t], da[t], h, out=hs[t])


def selective_scan_torch(u: Tensor, delta: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int = 64) -> Tensor:
    """u, delta (b, l, e), a (e, n), b, c (b, l, n) -> (b, l, e), in float32 (or float64) whatever the input."""
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    y = SelectiveScan.apply(*(t.to(dtype) for t in (u, delta, a, b, c)), chunk)
    return y.to(u.dtype)


def fused_scan_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except ImportError:
        return False
    return True


class MambaMixer(nn.Module):
    """(b, l, d) -> (b, l, d), causal. Same parameters as mamba_ssm.Mamba(d_model, d_state, d_conv, expand);
    without `projections`, no in_proj and out_proj (a direction that shares another mixer's): then
    only `inner` is used."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int, dt_min: float,
                 dt_max: float, dt_init_floor: float, chunk: int, projections: bool = True):
        super().__init__()
        e = expand * d_model
        self.d_state, self.dt_rank, self.chunk = d_state, dt_rank, chunk
        self.in_proj = nn.Linear(d_model, 2 * e, bias=False) if projections else None
        # Depthwise and causal; only its weights are used (mamba-ssm's names), see causal_depthwise_conv.
        self.conv1d = nn.Conv1d(e, e, d_conv, groups=e, padding=d_conv - 1)
        self.x_proj = nn.Linear(e, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, e)
        # Initialization as in the paper (section 3.6 and appendix): Δ log-uniform in [dt_min, dt_max]
        # through the inverse softplus of the bias; S4D-Real A_n = -(n+1).
        nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
        log_dt = torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1))
        self.D = nn.Parameter(torch.ones(e))
        for p in (self.A_log, self.D):  # decaying A or the skip toward 0 is not regularization
            p._optim = {"weight_decay": 0.0}
        self.out_proj = nn.Linear(e, d_model, bias=False) if projections else None

    def forward(self, u: Tensor, scan: str) -> Tensor:
        """u (b, l, d) -> (b, l, d); scan is the implementation: "cuda", "cpp" or "torch"."""
        return self.out_proj(self.inner(self.in_proj(u), scan))

    def inner(self, xz: Tensor, scan: str) -> Tensor:
        """Everything between the projections: in_proj's output xz (b, l, 2e) -> y (b, l, e)."""
        x, z = xz.chunk(2, dim=-1)  # (b, l, e) each
        conv = mamba_cpu.conv_silu_cpp if scan == "cpp" else CausalConvSiLU.apply
        x = conv(x, self.conv1d.weight, self.conv1d.bias)
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        a = -torch.exp(self.A_log.float())  # (e, n)
        if scan == "cpp":  # the same computation as the fused CUDA call below, in one CPU kernel
            return mamba_cpu.selective_scan_cpp(x, dt, self.dt_proj.weight, a, b, c, self.D, z, self.dt_proj.bias)
        dt = dt @ self.dt_proj.weight.T  # bias added with the softplus (inside the fused kernel on CUDA)
        if scan == "cuda":
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

            y = selective_scan_fn(
                x.transpose(1, 2), dt.transpose(1, 2), a, b.transpose(1, 2).contiguous(),
                c.transpose(1, 2).contiguous(), self.D.float(), z.transpose(1, 2),
                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
            ).transpose(1, 2)
        else:
            delta = F.softplus(dt + self.dt_proj.bias)
            y = selective_scan_torch(x, delta, a, b, c, self.chunk) + x * self.D
            y = y * F.silu(z)
        return y  # (b, l, e)


def causal_depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """y_t = bias + sum_j weight[:, 0, j] x_{t-k+1+j}: x (b, l, e), weight (e, 1, k), bias (e) -> (b, l, e).
    A sum of k shifted products in the (b, l, e) layout: as exact as nn.Conv1d, without its two
    transposes, and on CPU its backward is ~20x faster than a grouped convolution's."""
    k, length = weight.shape[-1], x.shape[1]
    padded = F.pad(x, (0, 0, k - 1, 0))  # k-1 zeros before the first step
    y = bias + padded[:, :length] * weight[:, 0, 0]
    for j in range(1, k):
        y = torch.addcmul(y, padded[:, j : j + length], weight[:, 0, j])
    return y


class CausalConvSiLU(torch.autograd.Function):
    """silu(causal_depthwise_conv(x, weight, bias)), shapes as there. Keeps only x (a view of in_proj's
    output, kept anyway) for the backward and recomputes the convolution there: storing its padded
    input and its output would cost two (b, l, e) tensors per mixer for a few products."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return F.silu(causal_depthwise_conv(x, weight, bias))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        k, length = weight.shape[-1], x.shape[1]
        pre = causal_depthwise_conv(x, weight, bias)
        sig = torch.sigmoid(pre)
        dpre = pre.mul_(1 - sig).add_(1).mul_(sig).mul_(dy)  # silu'(v) = σ(v) (1 + v (1 - σ(v)))
        padded = F.pad(x, (0, 0, k - 1, 0))
        dpadded = torch.zeros_like(padded)
        dweight = torch.empty_like(weight)
        for j in range(k):  # y_t gets weight_j x_{t-k+1+j}: x at padded position t+j
            dpadded[:, j : j + length].addcmul_(dpre, weight[:, 0, j])
            dweight[:, 0, j] = (dpre * padded[:, j : j + length]).sum((0, 1))
        return dpadded[:, k - 1 :], dweight, dpre.sum((0, 1))


class _PermuteRows(torch.autograd.Function):
    """x (b, l, d) -> its rows (b·l of them, d wide) picked by `rows` (b·l,), a permutation that is its
    own inverse, so the backward picks the gradient's rows the same way. Whole-row index_select copies
    rows; gather with an index expanded over d (and autograd's scatter-add backward) runs ~5x slower."""

    @staticmethod
    def forward(ctx, x, rows):
        ctx.save_for_backward(rows)
        return x.reshape(-1, x.shape[-1]).index_select(0, rows).view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (rows,) = ctx.saved_tensors
        return dy.reshape(-1, dy.shape[-1]).index_select(0, rows).view_as(dy), None


def flip_within(x: Tensor, mask: Tensor | None) -> Tensor:
    """Reverse each sequence of x (b, l, d) within its real length; padding stays on the right.
    Its own inverse."""
    if mask is None:
        return x.flip(1)
    lengths = mask.sum(1, keepdim=True)  # (b, 1)
    pos = torch.arange(x.shape[1], device=x.device)[None]
    index = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (b, l)
    rows = index + x.shape[1] * torch.arange(x.shape[0], device=x.device)[:, None]  # (b, l) into b·l rows
    return _PermuteRows.apply(x, rows.reshape(-1))


class MambaBlock(nn.Module):
    """x + Dropout(mixer(LN(x)) [+ reversed mixer_rev]), pre-norm residual as in mamba-ssm."""

    def __init__(self, d_model: int, dropout: float, bidirectional: bool, tie_projections: bool, **mixer):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = MambaMixer(d_model, **mixer)
        self.mixer_rev = MambaMixer(d_model, projections=not tie_projections, **mixer) if bidirectional else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, scan: str) -> Tensor:
        h = self.norm(x)
        if self.mixer_rev is None:
            y = self.mixer(h, scan)
        elif self.mixer_rev.in_proj is None:  # tied: out(inner(in(h))) + flip(out(inner_rev(in(flip(h))))), with one in and one out
            xz = self.mixer.in_proj(h)
            rev = flip_within(self.mixer_rev.inner(flip_within(xz, mask), scan), mask)
            y = self.mixer.out_proj(self.mixer.inner(xz, scan) + rev)
        else:
            y = self.mixer(h, scan) + flip_within(self.mixer_rev(flip_within(h, mask), scan), mask)
        return x + self.drop(y)


class Mamba(Backbone):
    """(B, L, D) -> (B, L, D): a stack of Mamba blocks and a final LayerNorm."""

    def __init__(self, d_model: int, n_layers: int, dropout: float = 0.0, *, max_len: int, d_state: int = 16,
                 d_conv: int = 4, expand: int = 2, dt_rank: int | str = "auto", dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, bidirectional: bool = True,
                 tie_projections: bool = False, impl: str = "auto", chunk_size: int = 16):
        super().__init__()
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("max_len", max_len),
                            ("d_state", d_state), ("d_conv", d_conv), ("expand", expand), ("dt_rank", dt_rank),
                            ("chunk_size", chunk_size)):
            check_positive(name, value)
        check_dropout(dropout)
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if tie_projections and not bidirectional:
            raise ValueError("tie_projections=true shares projections between the two directions: it needs "
                             "bidirectional=true")
        if impl not in IMPLS:
            raise ValueError(f"impl={impl!r} is not one of {', '.join(IMPLS)}")
        if impl == "cuda" and not fused_scan_available():
            raise ValueError("impl=cuda needs a CUDA GPU and mamba-ssm (pip install -e '.[cuda]'); "
                             "use impl=torch or impl=auto to run the PyTorch scan")
        if impl == "cpp" and (reason := mamba_cpu.unavailable_reason()):
            raise ValueError(f"impl=cpp: {reason}; or use impl=torch")
        self.causal, self.max_len, self.impl_requested = not bidirectional, max_len, impl
        self.used: set[str] = set()  # implementations that actually ran
        self.warned = False  # the reason impl=auto cannot use the C++ scan is logged once
        mixer = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max,
                     dt_init_floor=dt_init_floor, chunk=chunk_size)
        self.blocks = nn.ModuleList(MambaBlock(d_model, dropout, bidirectional, tie_projections, **mixer)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    @property
    def impl(self) -> str:
        """What ran ("cuda", "cpp", "torch", or e.g. "cpp+cuda" if several did); before any forward, what
        would run on a CPU tensor."""
        if self.used:
            return "+".join(sorted(self.used))
        return self.scan_for(torch.empty(0))

    def scan_for(self, x: Tensor) -> str:
        """The scan implementation for input x."""
        want = self.impl_requested
        if want == "cuda" and not x.is_cuda:
            raise ValueError("impl=cuda but the input is on the CPU: set device=cuda, or impl=cpp/torch/auto")
        if want == "cpp" and x.is_cuda:
            raise ValueError("impl=cpp is the CPU scan but the input is on CUDA: set impl=cuda/torch/auto")
        if want != "auto":
            return want
        if x.is_cuda:
            return "cuda" if fused_scan_available() else "torch"
        reason = mamba_cpu.unavailable_reason()
        if reason and not self.warned:
            log.warning("mamba: compiled CPU scan unavailable (%s); impl=auto runs the slower PyTorch scan", reason)
            self.warned = True
        return "torch" if reason else "cpp"

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = real -> (B, L, D)."""
        check_length(x.shape[1], self.max_len)
        scan = self.scan_for(x)
        self.used.add(scan)
        for block in self.blocks:
            x = block(x, mask, scan)
        return self.norm(x)
