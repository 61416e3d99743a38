"""Conformance over the registry: every conf/arch/*.yaml (and its causal/position variants) must
meet the backbone contract. A new backbone gets these checks by adding its YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recipes.errors import ConfigError
from recipes.model import build_backbone

ARCH_DIR = Path(__file__).resolve().parent.parent / "conf" / "arch"
ARCHS = sorted(p.stem for p in ARCH_DIR.glob("*.yaml"))
SMALL = {"d_model": 16, "n_layers": 2, "dropout": 0.0}
# Options worth covering beyond each YAML's defaults: (arch, overrides).
VARIANTS = [(a, {}) for a in ARCHS] + [(a, {"causal": True}) for a in ARCHS] + [
    ("transformer", {"pos": p}) for p in ("learned", "sinusoidal", "rotary")
]


def make(arch: str, **overrides):
    cfg = OmegaConf.load(ARCH_DIR / f"{arch}.yaml")
    cfg = OmegaConf.merge(cfg, {k: v for k, v in SMALL.items() if k in cfg}, overrides)
    torch.manual_seed(0)
    return build_backbone(cfg, max_len=40).eval()


def ids(variant):
    return f"{variant[0]}-" + "-".join(f"{k}={v}" for k, v in variant[1].items())


@pytest.fixture(params=VARIANTS, ids=ids)
def backbone(request):
    arch, overrides = request.param
    return make(arch, **overrides), arch, overrides


def test_registry_is_not_empty():
    assert "transformer" in ARCHS


def test_shape_and_gradient_reaches_every_parameter(backbone):
    model, _, _ = backbone
    model.train()
    x = torch.randn(3, 40, 16, requires_grad=True)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    y = model(x, mask)
    assert y.shape == (3, 40, 16) and torch.isfinite(y).all()
    (y * mask[..., None]).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_padding_does_not_influence_real_positions(backbone):
    model, _, _ = backbone
    torch.manual_seed(1)
    x = torch.randn(2, 30, 16)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 18:] = False
    y = model(x, mask)
    x2 = x.clone()
    x2[0, 18:] = torch.randn(12, 16) * 100  # garbage in the padding
    y2 = model(x2, mask)
    torch.testing.assert_close(y[0, :18], y2[0, :18])
    # and the same sequence without any padding gives the same real outputs
    y3 = model(x[:1, :18], mask[:1, :18])
    torch.testing.assert_close(y[0, :18], y3[0], atol=1e-5, rtol=1e-5)


def test_causality_when_declared(backbone):
    model, _, overrides = backbone
    assert model.causal == bool(overrides.get("causal", False))
    x = torch.randn(2, 24, 16)
    x2 = x.clone()
    x2[:, 12:] += torch.randn(2, 12, 16)
    padded = torch.ones(2, 24, dtype=torch.bool)
    padded[1, 20:] = False
    # Without a mask, with an all-real mask, and with padding: training always passes a mask.
    for mask in (None, torch.ones(2, 24, dtype=torch.bool), padded):
        y, y2 = model(x, mask), model(x2, mask)
        if model.causal:
            torch.testing.assert_close(y[:, :12], y2[:, :12])
        else:  # a bidirectional model must see the future, or causal=False would be a lie
            assert not torch.allclose(y[:, :12], y2[:, :12])


def test_state_dict_round_trip(backbone, tmp_path):
    model, arch, overrides = backbone
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    other = make(arch, **overrides)
    for p in other.parameters():  # make sure the load, not a shared seed, is what matches
        torch.nn.init.normal_(p)
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 20, 16)
    torch.testing.assert_close(model(x), other(x))


@pytest.mark.parametrize("overrides, message", [
    ({"n_heads": 3}, "not divisible by n_heads"),
    ({"d_model": 0}, "d_model=0 must be a positive integer"),
    ({"pos": "alibi"}, "pos='alibi' is not one of"),
    ({"dropout": 1.5}, "dropout=1.5"),
    ({"n_head": 4}, "unexpected keyword argument 'n_head'"),  # a typo must not vanish
])
def test_transformer_bad_options_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make("transformer", **overrides)
