"""The backbone contract as checks, for built-in backbones and plugins alike.

tests/test_backbones.py runs them on every conf/arch/*.yaml; `python -m recipes.check_arch PATH.yaml` runs
them on YAMLs anywhere (recipes/check_arch.py). Each check takes `make(seed) -> backbone` (width D, built
for sequences up to MAX_LEN, in eval mode, its weights drawn under `seed`) and whether its config
declares it causal, and raises CheckFailed with one line saying what is wrong.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from archs.base import is_causal

D, MAX_LEN = 16, 40
SMALL = {"d_model": D, "n_layers": 2, "dropout": 0.0}  # small, and without dropout so outputs repeat
Make = Callable[[int], nn.Module]


class CheckFailed(AssertionError):
    """One failed check; its message is one line."""


def declared_causal(cfg: Mapping) -> bool:
    """The direction an arch config declares: `causal`, else `bidirectional`, else bidirectional."""
    return bool(cfg["causal"]) if "causal" in cfg else not cfg.get("bidirectional", True)


def flipped_direction(cfg: Mapping) -> dict:
    """The override that turns a config's direction around, or {} when it has no direction option."""
    if "causal" in cfg:
        return {"causal": not cfg["causal"]}
    if "bidirectional" in cfg:
        return {"bidirectional": not cfg["bidirectional"]}
    return {}


def require_close(a: Tensor, b: Tensor, what: str, atol: float = 1e-5, rtol: float = 1.3e-6) -> None:
    """torch.testing.assert_close's float32 tolerances, failing with one line."""
    if a.shape != b.shape:
        raise CheckFailed(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if not torch.allclose(a, b, rtol=rtol, atol=atol):
        raise CheckFailed(f"{what} (largest difference {(a - b).abs().max().item():.3g})")


def shapes_and_gradients(make: Make, causal: bool) -> None:
    """(B, L, D) -> (B, L, D), finite, and the loss on real positions reaches every parameter."""
    model = make(0).train()
    x = torch.randn(3, MAX_LEN, D, requires_grad=True)
    mask = torch.ones(3, MAX_LEN, dtype=torch.bool)
    mask[1, 25:] = False
    y = model(x, mask)
    if y.shape != x.shape:
        raise CheckFailed(f"output shape {tuple(y.shape)} for input {tuple(x.shape)}: a backbone keeps (B, L, D)")
    if not torch.isfinite(y).all():
        raise CheckFailed("non-finite outputs for finite inputs")
    (y * mask[..., None]).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if missing:
        raise CheckFailed(f"no gradient reaches {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")


def padding_invariance(make: Make, causal: bool) -> None:
    """Padded positions (mask False, on the right) do not change real outputs, and a padded
    sequence gives the same real outputs as the same sequence alone without padding."""
    model = make(0)
    torch.manual_seed(1)
    x = torch.randn(2, 30, D)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 18:] = False
    y = model(x, mask)
    x2 = x.clone()
    x2[0, 18:] = torch.randn(12, D) * 100  # garbage in the padding
    require_close(y[0, :18], model(x2, mask)[0, :18], "real outputs change when only the padding does: "
                  "ignore positions where mask is False")
    require_close(y[0, :18], model(x[:1, :18], mask[:1, :18])[0], "a padded sequence gives other real outputs "
                  "than the same sequence unpadded", atol=1e-5, rtol=1e-5)


def direction(make: Make, causal: bool) -> None:
    """Causal when the config says so (position t sees only <= t), and otherwise really bidirectional:
    the SPT recipe picks next-token or masked-token prediction from it, so a wrong claim trains on leaks."""
    model = make(0)
    if is_causal(model) != causal:
        raise CheckFailed(f"the config declares causal={causal} but the module's `causal` is {is_causal(model)}")
    x = torch.randn(2, 24, D)
    x2 = x.clone()
    x2[:, 12:] += torch.randn(2, 12, D)
    padded = torch.ones(2, 24, dtype=torch.bool)
    padded[1, 20:] = False
    # Without a mask, with an all-real mask, and with padding: training always passes a mask.
    for mask, how in ((None, "mask=None"), (torch.ones(2, 24, dtype=torch.bool), "all-real mask"),
                      (padded, "padded mask")):
        y, y2 = model(x, mask), model(x2, mask)
        if causal:
            require_close(y[:, :12], y2[:, :12], f"declared causal, but earlier outputs change with later inputs "
                          f"({how})")
        elif torch.allclose(y[:, :12], y2[:, :12]):
            raise CheckFailed(f"declared bidirectional, but no output sees later inputs ({how}): set causal=True "
                              "(attribute and config) if the model is causal")


def state_dict_round_trip(make: Make, causal: bool) -> None:
    """Saved weights loaded into a freshly built (and scrambled) model give the same outputs."""
    model = make(0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    other = make(0)
    for p in other.parameters():  # make sure the load, not a shared seed, is what matches
        torch.nn.init.normal_(p)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 20, D)
    require_close(model(x), other(x), "outputs differ after a state_dict save and load")


def determinism(make: Make, causal: bool) -> None:
    """Same seed -> same weights and the same training step; another seed -> other weights."""
    a, b, c = make(3), make(3), make(4)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if not torch.equal(p, q):
            raise CheckFailed(f"{name} differs between two models built under the same seed")
    if all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values())):
        raise CheckFailed("models built under different seeds have the same weights")
    x = torch.randn(2, 20, D)
    losses = []
    for model in (a, b):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append((loss.item(), model(x).detach()))
    if losses[0][0] != losses[1][0] or not torch.equal(losses[0][1], losses[1][1]):
        raise CheckFailed("one training step from the same weights gives different results")


class Probe(nn.Module):
    """Embedding -> backbone -> mean-pooled linear head, for the learnability check."""

    def __init__(self, backbone: nn.Module, vocab: int, n_classes: int):
        super().__init__()
        self.embed, self.backbone = nn.Embedding(vocab, D), backbone
        self.head = nn.Linear(D, n_classes)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (B, L) -> logits (B, C)."""
        h = self.backbone(self.embed(ids), torch.ones_like(ids, dtype=torch.bool))
        return self.head(h.mean(1))


def first_token_batch(n: int, length: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """A start token (0), then tokens 1..8; the label is the first token after the start, mod 4
    (chance 0.25). A model that does not mix positions sees that token only as one of ten in the
    mean-pooled output, indistinguishable from the others; one that mixes can tag it by its
    neighbour, the start token (found by content, so relative-position models can too)."""
    ids = torch.randint(1, 9, (n, length), generator=gen)
    ids[:, 0] = 0
    return ids, ids[:, 1] % 4


def learns_a_small_task(make: Make, causal: bool) -> None:
    """Above 0.6 accuracy (chance 0.25) after 300 AdamW steps on first_token_batch."""
    model = Probe(make(0), vocab=9, n_classes=4).train()
    # One group per parameter, with the optimizer hints a backbone attaches (`param._optim`), as
    # recipes.engine.loop.param_groups reads them (without weight decay here).
    opt = torch.optim.AdamW([{"params": [p], "lr": 3e-3, "weight_decay": 0.0, **getattr(p, "_optim", {})}
                             for p in model.parameters() if p.requires_grad])
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        ids, labels = first_token_batch(32, 10, gen)
        loss = nn.functional.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, labels = first_token_batch(512, 10, gen)
    with torch.no_grad():
        acc = (model(ids).argmax(-1) == labels).float().mean().item()
    if not acc > 0.6:
        raise CheckFailed(f"accuracy {acc:.2f} after 300 steps on a task that needs positions to mix (chance 0.25)")


# name -> check, in the order they run (cheap first).
CHECKS = {
    "shapes and gradients": shapes_and_gradients,
    "padding invariance": padding_invariance,
    "direction": direction,
    "state dict round trip": state_dict_round_trip,
    "determinism": determinism,
    "learns a small task": learns_a_small_task,
}
