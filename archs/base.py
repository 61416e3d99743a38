"""The backbone contract every architecture meets.

A backbone maps a sequence of vectors to a sequence of vectors, (B, L, D) -> (B, L, D). It owns no
token embedding, no head and no pooling: those belong to the task (input encoder) and the recipe
(heads), so that two backbones compared in a report differ only in how they mix positions.

Constructor: `Backbone(d_model, n_layers, dropout, *, max_len, <arch-specific keywords>)`.
`max_len` is the longest sequence the model will ever be given; the model builder passes it (the
task's length plus one, room for a CLS token) to a constructor that takes it, so the YAML never has
to guess it. Subclassing is optional: any nn.Module with this constructor and forward plugs in.
Constructors take no `**kwargs`: a misspelt option in a config must fail, not vanish.
"""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """(B, L, D) -> (B, L, D).

    `mask` (B, L) bool, True = real token. Padding is always on the right; padded positions must
    not influence real ones (their own outputs are unspecified). `causal` says whether position t
    sees only positions <= t — the SPT recipe uses it to choose next-token prediction over
    masked-token prediction.
    """

    causal: bool = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover - contract
        raise NotImplementedError


def is_causal(backbone: nn.Module) -> bool:
    """Whether position t sees only positions <= t. A module without a `causal` attribute is
    bidirectional: the recipes (objective, pooling) and the conformance checks all ask here."""
    return bool(getattr(backbone, "causal", False))


def check_positive(name: str, value) -> None:
    """Raise ValueError naming the option when a size is not a positive integer.

    Plain ValueError on purpose: archs import nothing from recipes; the model builder turns it into
    the one-line configuration error the user sees.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def check_length(length: int, max_len: int) -> None:
    """Refuse sequences longer than the model was built for (position tables and SSM kernels are
    sized by max_len; silently truncating or extrapolating would change what is measured)."""
    if length > max_len:
        raise ValueError(f"sequence length {length} exceeds max_len={max_len}")


def check_dropout(value) -> None:
    """Raise ValueError unless 0 <= dropout < 1 (1 would zero every activation)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout={value!r} must be a number in [0, 1)")
