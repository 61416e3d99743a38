"""A residual 1D CNN: ConvNeXt-style blocks (Liu et al. 2022, "A ConvNet for the 2020s", in 1D)
with dilated depthwise convolutions.

Glossary: B batch, L length, D d_model, k kernel_size, d_i the dilation of block i.

Block: x + Dropout(W2 GELU(W1 LN(DWConv_{k, d_i}(x)))): the depthwise convolution mixes
positions (one filter per channel), the pointwise MLP (width `expansion` · D) mixes channels.

Receptive field. Each block reaches r · d_i positions to each side (non-causal, r = (k-1)/2) or
backwards (causal, r = k-1). Dilations 1, k, k², ... reach every offset up to r · (1 + k + ... )
with no holes (offsets are numbers written in base k), so we use the fewest powers of k that
cover max_len and cycle through them if there are more blocks (as WaveNet does). With too few
blocks for that, the base grows past k until the reach covers max_len: every position is then
within reach, but some offsets are skipped; `receptive_field` and `dilations` say what was built.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from archs.base import Backbone, check_dropout, check_length, check_positive


def dilation_schedule(n_layers: int, kernel_size: int, max_len: int, causal: bool) -> list[int]:
    reach = kernel_size - 1 if causal else (kernel_size - 1) // 2
    need = max_len - 1  # the farthest offset between two positions

    def covers(base: int, layers: int) -> bool:
        return reach * sum(base**i for i in range(layers)) >= need

    if n_layers == 1:  # one block: a single dilation spreads its taps over the whole length
        return [max(1, -(-need // reach))]
    base = kernel_size
    for m in range(1, n_layers + 1):
        if covers(base, m):
            return [base ** (i % m) for i in range(n_layers)]
    while not covers(base, n_layers):
        base += 1
    return [base**i for i in range(n_layers)]


class ConvBlock(nn.Module):
    def __init__(self, d_model: int, kernel_size: int, dilation: int, expansion: int, dropout: float, causal: bool):
        super().__init__()
        span = dilation * (kernel_size - 1)
        self.pad = (span, 0) if causal else (span // 2, span // 2)  # causal: look back only
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, expansion * d_model), nn.GELU(),
                                 nn.Linear(expansion * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x (B, L, D), mask (B, L) or None."""
        u = x if mask is None else x * mask[..., None]  # zero the padding: a centered filter would read it
        y = self.conv(F.pad(u.transpose(1, 2), self.pad)).transpose(1, 2)
        return x + self.drop(self.mlp(self.norm(y)))


class CNN(Backbone):
    """(B, L, D) -> (B, L, D): residual dilated depthwise-separable CNN; bidirectional unless `causal`."""

    impl = "torch"

    def __init__(self, d_model: int, n_layers: int, dropout: float = 0.0, *, max_len: int, kernel_size: int = 7,
                 expansion: int = 4, causal: bool = False):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_layers", n_layers), ("max_len", max_len),
                            ("kernel_size", kernel_size), ("expansion", expansion)):
            check_positive(name, value)
        check_dropout(dropout)
        if kernel_size < 2 or (not causal and kernel_size % 2 == 0):
            raise ValueError(f"kernel_size={kernel_size} must be odd and >= 3 (centered filters), or >= 2 "
                             "with causal=true")
        self.causal, self.max_len = bool(causal), max_len
        self.dilations = dilation_schedule(n_layers, kernel_size, max_len, self.causal)
        reach = (kernel_size - 1 if self.causal else (kernel_size - 1) // 2) * sum(self.dilations)
        self.receptive_field = reach + 1 if self.causal else 2 * reach + 1  # positions one output sees
        self.blocks = nn.ModuleList(ConvBlock(d_model, kernel_size, d, expansion, dropout, self.causal)
                                    for d in self.dilations)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x (B, L, D), mask (B, L) bool True = real -> (B, L, D)."""
        check_length(x.shape[1], self.max_len)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)
