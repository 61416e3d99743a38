"""Pre-LayerNorm Transformer encoder (Vaswani et al. 2017; pre-LN as in Xiong et al. 2020).

Glossary: B batch, L sequence length, D d_model, H heads, E = D / H head width.
Each block: x + Attn(LN(x)), then x + FFN(LN(x)); a final LN closes the stack (pre-LN leaves the
residual stream un-normalized). Attention is `scaled_dot_product_attention`, so a fused kernel is
used wherever PyTorch has one.

Positions, since attention alone is permutation-invariant:
- `learned`: a trained table of `max_len` vectors added to the input;
- `sinusoidal`: the fixed sin/cos table of Vaswani et al., added to the input;
- `rotary`: RoPE (Su et al. 2021) — queries and keys rotated by position-dependent angles, so
  attention scores depend on relative offsets. Needs no table and no `max_len`.

`block_size` (Amos et al. 2024 for Path-X, sequences of 16K and more): the sequence is cut into
blocks of that many positions and each query attends only to keys of its own block and of the two
neighbouring blocks — cost O(L · 3 · block) instead of O(L²). `block_attention` computes it with
`scaled_dot_product_attention` on key windows of three blocks, so fused kernels still apply.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from archs.base import Backbone, check_dropout, check_length, check_positive

POSITIONS = ("learned", "sinusoidal", "rotary")


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """(length, dim) table: even channels sin(p / 10000^(2i/dim)), odd channels cos(...)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: dim // 2])
    return table


def rotate(x: Tensor, base: float) -> Tensor:
    """Apply RoPE to (B, H, L, E): channel pairs (i, i + E/2) rotate by angle p * base^(-2i/E)."""
    e = x.shape[-1]
    inv = base ** (-torch.arange(0, e, 2, device=x.device, dtype=torch.float32) / e)  # (E/2)
    ang = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * inv  # (L, E/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : e // 2], x[..., e // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def block_attention(q: Tensor, k: Tensor, v: Tensor, key_real: Tensor | None, block: int, dropout_p: float) -> Tensor:
    """Attention where position i sees key j only if |i // block - j // block| <= 1.

    q, k, v (B, H, L, E); key_real (B, L) bool or None (all real) -> (B, H, L, E). L is padded to
    a whole number of blocks; the padding is masked out as keys and its outputs dropped."""
    b, h, length, e = q.shape
    n = -(-length // block)  # blocks
    pad = n * block - length
    real = torch.ones(b, length, dtype=torch.bool, device=q.device) if key_real is None else key_real
    # One empty block before and after, so that every query block has a three-block key window.
    q = F.pad(q, (0, 0, 0, pad))
    k, v = (F.pad(t, (0, 0, block, pad + block)) for t in (k, v))
    real = F.pad(real, (block, pad + block), value=False)  # (B, (n + 2) · block)
    qb = q.reshape(b, h, n, block, e).transpose(1, 2).reshape(b * n, h, block, e)
    kb, vb = (t.unfold(2, 3 * block, block).permute(0, 2, 1, 4, 3).reshape(b * n, h, 3 * block, e) for t in (k, v))
    allowed = real.unfold(1, 3 * block, block).reshape(b * n, 1, 1, 3 * block)
    # A window of padding only (a query block past the real length) would give NaN rows; its outputs
    # are never read, so let it attend to its (padded) keys.
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=allowed, dropout_p=dropout_p)  # (B·n, H, block, E)
    return y.reshape(b, n, h, block, e).transpose(1, 2).reshape(b, h, n * block, e)[:, :, :length]


class Attention(nn.Module):
    """Multi-head self-attention, over all positions or in blocks (`block_size`).

    The probe hook (recipes/extras/probes.py): with `keep_weights = True` the forward materialises the
    attention probabilities, uses them for its output (the same result as the fused kernel, up to
    rounding) and keeps them in `self.weights` (B, H, L, L), rows = queries. Any attention module of
    a plugin that offers the same two attributes gets the attention probes."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, rope_base: float | None,
                 block_size: int | None = None):
        super().__init__()
        self.n_heads, self.dropout, self.causal, self.rope_base = n_heads, dropout, causal, rope_base
        self.block_size = block_size
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.keep_weights, self.weights = False, None

    def forward(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        """x (B, L, D); allowed (B, 1, L|1, L) bool, True = query may attend to key."""
        q, k, v = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.n_heads)
        if self.rope_base is not None:
            q, k = rotate(q, self.rope_base), rotate(k, self.rope_base)
        if self.keep_weights:
            return self.out(rearrange(self.explicit(q, k, v, allowed), "b h l e -> b l (h e)"))
        if self.block_size is not None:  # bidirectional only (checked by Transformer); allowed is (B, 1, 1, L)
            key_real = None if allowed is None else allowed[:, 0, 0]
            y = block_attention(q, k, v, key_real, self.block_size, self.dropout if self.training else 0.0)
            return self.out(rearrange(y, "b h l e -> b l (h e)"))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and allowed is None,
        )
        return self.out(rearrange(y, "b h l e -> b l (h e)"))

    def explicit(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
        """softmax(q k^T / sqrt(E)) v with the probabilities kept; q, k, v (B, H, L, E). For probes (no dropout)."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, L, L)
        length = q.shape[-2]
        if allowed is None and self.causal:
            allowed = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        if self.block_size is not None:  # the blocks' pattern: |i // block - j // block| <= 1
            blocks = torch.arange(length, device=q.device) // self.block_size
            near = (blocks[:, None] - blocks[None, :]).abs() <= 1
            allowed = near if allowed is None else allowed & near
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        self.weights = scores.softmax(-1)
        return self.weights @ v


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, causal: bool, rope_base,
                 block_size: int | None = None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout, causal, rope_base, block_size)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), allowed))
        return x + self.drop(self.ff(self.norm2(x)))


class Transformer(Backbone):
    """(B, L, D) -> (B, L, D) pre-LN Transformer encoder; bidirectional unless `causal`."""

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        dropout: float = 0.1,
        *,
        max_len: int,
        n_heads: int = 4,
        d_ff: int | None = None,
        pos: str = "rotary",
        causal: bool = False,
        rope_base: float = 10000.0,
        block_size: int | None = None,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads), ("max_len", max_len)):
            check_positive(name, value)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}; pick n_heads that divides it")
        if pos not in POSITIONS:
            raise ValueError(f"pos={pos!r} is not one of {', '.join(POSITIONS)}")
        if pos == "rotary" and (d_model // n_heads) % 2:
            raise ValueError(f"rotary positions need an even head width; d_model/n_heads = {d_model // n_heads}")
        check_dropout(dropout)
        if block_size is not None:
            check_positive("block_size", block_size)
            if causal:
                raise ValueError("block_size (local attention) works with causal=false only; unset one of them")
        d_ff = 4 * d_model if d_ff is None else d_ff
        check_positive("d_ff", d_ff)
        self.causal, self.pos, self.max_len = bool(causal), pos, max_len
        if pos == "learned":
            self.pos_table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        elif pos == "sinusoidal":
            # Not persistent: derived from the config, so state dicts stay free of constants.
            self.register_buffer("pos_table", sinusoidal_table(max_len, d_model), persistent=False)
        rope = rope_base if pos == "rotary" else None
        self.drop = nn.Dropout(dropout)
        self.block_size = block_size
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout, self.causal, rope, block_size)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = real -> (B, L, D)."""
        length = x.shape[1]
        check_length(length, self.max_len)
        if self.pos != "rotary":
            x = x + self.pos_table[:length]
        allowed = None
        if mask is not None:
            allowed = mask[:, None, None, :]  # (B, 1, 1, L): no query looks at a padded key
            if self.causal:
                tri = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
                allowed = allowed & tri  # (B, 1, L, L)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, allowed)
        return self.norm(x)
