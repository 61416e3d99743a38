"""Model assembly, written once for every backbone and task.

    ids (B, L) --task encoder--> (B, L, D) --backbone--> (B, L, D) --head--> logits

`Body` = encoder + backbone: the part self-pretraining trains and fine-tuning inherits.
`Classifier` = Body + mask-aware pooling + linear layer, (B, L) -> (B, C).
`DualClassifier` = the two-tower head of Retrieval: the *same* Body encodes both documents,
    (B, 2, L) -> u, v (B, D) -> MLP on [u, v, u*v, u-v] -> (B, C).
`TokenPredictor` = Body + linear layer per position, (B, L) -> (B, L, V), used by SPT: V is the
    vocabulary, the pixel levels (CE), or 1 (L1 regression on pixel values).
"""

from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from recipes.errors import ConfigError, root_cause
from recipes.plugins import accepts, locate
from tasks.base import Task

POOLINGS = ("mean", "cls", "last")


class Body(nn.Module):
    def __init__(self, encoder: nn.Module, backbone: nn.Module):
        super().__init__()
        self.encoder, self.backbone = encoder, backbone

    def forward(self, ids: Tensor, mask: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """ids (B, L), mask (B, L); prefix (D,) is prepended (a CLS token) -> h (B, L', D), mask (B, L')."""
        x = self.encoder(ids)
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], 1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return self.backbone(x, mask), mask


def pool(h: Tensor, mask: Tensor, how: str) -> Tensor:
    """h (B, L, D), mask (B, L) -> (B, D). Padded positions never contribute."""
    if how == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "last":  # right padding: the last real position is length - 1
        last = mask.sum(1).long() - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    return h[:, 0]  # cls: the prepended token


class Classifier(nn.Module):
    def __init__(self, body: Body, d_model: int, n_classes: int, pooling: str):
        super().__init__()
        self.body, self.pooling = body, pooling
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02) if pooling == "cls" else None
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) -> logits (B, C)."""
        h, mask = self.body(ids, mask, self.cls)
        return self.head(pool(h, mask, self.pooling))


class DualClassifier(nn.Module):
    """Two documents through one shared Body (one batch of 2B), pooled to u and v, then an MLP on
    [u, v, u*v, u-v] — the LRA matching head, so the documents only meet after encoding."""

    def __init__(self, body: Body, d_model: int, n_classes: int, pooling: str):
        super().__init__()
        self.body, self.pooling = body, pooling
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02) if pooling == "cls" else None
        self.head = nn.Sequential(nn.Linear(4 * d_model, d_model), nn.GELU(), nn.Linear(d_model, n_classes))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, 2, L), mask (B, 2, L) -> logits (B, C)."""
        b = ids.shape[0]
        flat_ids, flat_mask = ids.transpose(0, 1).reshape(2 * b, -1), mask.transpose(0, 1).reshape(2 * b, -1)
        h, flat_mask = self.body(flat_ids, flat_mask, self.cls)
        u, v = pool(h, flat_mask, self.pooling).split(b)  # (B, D) each: first and second documents
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))


def build_classifier(body: Body, d_model: int, spec, pooling: str) -> nn.Module:
    """The task's classifier on `body`: two-tower for dual-input tasks, else pooled linear."""
    cls = DualClassifier if spec.dual else Classifier
    return cls(body, d_model, spec.n_classes, pooling)


class TokenPredictor(nn.Module):
    def __init__(self, body: Body, d_model: int, vocab_size: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids (B, L), mask (B, L) -> logits (B, L, V)."""
        return self.head(self.body(ids, mask)[0])


def flag_options(cls) -> list[str]:
    """The constructor arguments of `cls` annotated `bool`."""
    return [n for n, p in inspect.signature(cls).parameters.items() if p.annotation in (bool, "bool")]


def build_backbone(arch_cfg: DictConfig, max_len: int) -> nn.Module:
    """Instantiate `conf/arch/<name>.yaml`: `name` is the label, everything else the constructor's.

    Any nn.Module with `forward(x, mask=None)` and a constructor taking `d_model, n_layers, dropout`
    plugs in: `max_len` is passed only to a constructor that takes it, and a module without a
    `causal` attribute is bidirectional (archs.base.is_causal)."""
    params = OmegaConf.to_container(arch_cfg, resolve=True)
    name = params.pop("name", "?")
    if "_target_" not in params:
        raise ConfigError(f"arch '{name}' has no _target_: its YAML must name the backbone class")
    cls = locate(params["_target_"], f"arch '{name}'")
    for key in flag_options(cls):
        if key in params and not isinstance(params[key], bool):  # a string such as 'no' would be truthy
            raise ConfigError(f"arch.{key}={params[key]!r} must be true or false")
    extra = {"max_len": max_len} if accepts(cls, "max_len") else {}
    try:
        return instantiate(params, **extra, _convert_="all")
    except Exception as exc:  # Hydra wraps constructor errors; show the root cause in one line
        root = root_cause(exc)
        if isinstance(root, (ValueError, TypeError)):
            raise ConfigError(f"arch '{name}' ({params['_target_']}): {root}") from exc
        raise


def pooling_for(model_cfg: DictConfig, causal: bool) -> str:
    pooling = model_cfg.pooling
    if pooling == "auto":  # a causal model's summary of the whole input sits at the last position
        pooling = "last" if causal else "mean"
    if causal and pooling == "cls":
        raise ConfigError("model.pooling=cls with a causal backbone: a leading CLS token sees nothing; "
                          "use model.pooling=last or mean")
    return pooling


def build_body(cfg: DictConfig, task: Task) -> Body:
    """Encoder + backbone for `task`. The backbone always has room for one extra (CLS) position,
    so a pretrained body fits a classifier with any pooling."""
    backbone = build_backbone(cfg.arch, task.spec.max_len + 1)
    return Body(task.encoder(cfg.arch.d_model), backbone)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
