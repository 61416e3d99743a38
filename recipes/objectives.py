"""Self-pretraining objectives on token ids and on pixels.

- MLM (bidirectional backbones): each real token is masked independently with probability
  `ratio` and replaced by the mask id, as in Amos et al.'s code (no BERT 80/10/10 split); the loss
  is cross-entropy on masked positions only. A sequence that drew no mask gets one at a random real
  position, so every example contributes and a batch can never have an empty loss.
- NTP (causal backbones): position t predicts the token at t + 1, for every real t + 1.
Targets use IGNORE at positions that carry no loss. Both objectives work on pixel tasks unchanged
(a pixel id is its grey level; masking writes the task's mask id, which the pixel encoder shows
as a mask channel). Only the loss differs there: `token_loss` is cross-entropy over the 256
levels, `pixel_l1_loss` regresses the level scaled to [0, 1] (Amos et al.'s `lm_loss: l1`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -100


def mask_tokens(ids: Tensor, mask: Tensor, ratio: float, mask_id: int,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """ids (B, L), mask (B, L) bool real -> (inputs (B, L) with masked ids, targets (B, L))."""
    draw = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    chosen = (draw < ratio) & mask
    # Rows with no masked token: mask the real position with the smallest draw.
    empty = ~chosen.any(1)
    if empty.any():
        first = draw.masked_fill(~mask, 2.0).argmin(1)
        chosen[empty, first[empty]] = True
    inputs = ids.masked_fill(chosen, mask_id)
    targets = ids.masked_fill(~chosen, IGNORE)
    return inputs, targets


def next_token_targets(ids: Tensor, mask: Tensor) -> Tensor:
    """ids (B, L), mask (B, L) -> targets (B, L): targets[:, t] = ids[:, t + 1] where that is real."""
    targets = torch.full_like(ids, IGNORE)
    targets[:, :-1] = ids[:, 1:].masked_fill(~mask[:, 1:], IGNORE)
    return targets


def token_loss(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits (B, L, V), targets (B, L) -> (mean loss, n correct, n counted) over non-IGNORE positions."""
    keep = targets != IGNORE
    loss = F.cross_entropy(logits[keep].float(), targets[keep])
    correct = (logits[keep].argmax(-1) == targets[keep]).sum()
    return loss, correct, keep.sum()


def pixel_l1_loss(pred: Tensor, targets: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """pred (B, L, 1) values, targets (B, L) levels or IGNORE -> (mean |pred - level/(levels-1)|,
    n predictions that round to the right level, n counted), over non-IGNORE positions."""
    keep = targets != IGNORE
    value = pred[..., 0][keep].float()
    truth = targets[keep].float() / (levels - 1)
    loss = (value - truth).abs().mean()
    correct = ((value * (levels - 1)).round() == targets[keep]).sum()
    return loss, correct, keep.sum()
