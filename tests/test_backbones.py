"""Conformance over the registry: every conf/arch/*.yaml (and its causal/position variants) must
meet the backbone contract. A new backbone gets these checks by adding its YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from archs import mamba_cpu
from recipes.errors import ConfigError
from recipes.model import build_backbone

ARCH_DIR = Path(__file__).resolve().parent.parent / "conf" / "arch"
ARCHS = sorted(p.stem for p in ARCH_DIR.glob("*.yaml"))
SMALL = {"d_model": 16, "n_layers": 2, "dropout": 0.0}


def flipped_direction(arch: str) -> dict:
    """The override that turns an arch's default direction around: `causal` or `bidirectional`."""
    cfg = OmegaConf.load(ARCH_DIR / f"{arch}.yaml")
    if "causal" in cfg:
        return {"causal": not cfg.causal}
    if "bidirectional" in cfg:
        return {"bidirectional": not cfg.bidirectional}
    return {}


# Options worth covering beyond each YAML's defaults: (arch, overrides).
VARIANTS = [(a, {}) for a in ARCHS] + [(a, flipped_direction(a)) for a in ARCHS if flipped_direction(a)] + [
    ("transformer", {"pos": p}) for p in ("learned", "sinusoidal", "rotary")
] + [("s4d", {"init": i}) for i in ("lin", "legs")] + [
    ("mamba", {"impl": "torch", "chunk_size": 7}), ("s4", {"impl": "torch"}),  # the PyTorch paths; default is cpp
    ("mamba", {"tie_projections": True}),
]


def config(arch: str, **overrides):
    cfg = OmegaConf.load(ARCH_DIR / f"{arch}.yaml")
    return OmegaConf.merge(cfg, {k: v for k, v in SMALL.items() if k in cfg}, overrides)


def make(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_backbone(config(arch, **overrides), max_len=40).eval()


def declared_causal(arch: str, overrides: dict) -> bool:
    cfg = config(arch, **overrides)
    return bool(cfg.causal) if "causal" in cfg else not cfg.get("bidirectional", True)


def ids(variant):
    return f"{variant[0]}-" + "-".join(f"{k}={v}" for k, v in variant[1].items())


@pytest.fixture(params=VARIANTS, ids=ids)
def backbone(request):
    arch, overrides = request.param
    return make(arch, **overrides), arch, overrides


def test_registry_holds_the_four_families():
    assert {"transformer", "s4", "s4d", "mamba", "cnn"} <= set(ARCHS)


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
    model, arch, overrides = backbone
    assert model.causal == declared_causal(arch, overrides)
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


def test_determinism_under_a_seed(backbone):
    """Same seed -> same weights and the same training step; another seed -> other weights."""
    _, arch, overrides = backbone
    a, b, c = make(arch, 3, **overrides), make(arch, 3, **overrides), make(arch, 4, **overrides)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    x = torch.randn(2, 20, 16)
    losses = []
    for model in (a, b):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append((loss.item(), model(x).detach()))
    assert losses[0][0] == losses[1][0]
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=0, atol=0)


class Probe(torch.nn.Module):
    """Embedding -> backbone -> pooled linear head, for the learnability check."""

    def __init__(self, backbone, vocab: int, n_classes: int):
        super().__init__()
        self.embed, self.backbone = torch.nn.Embedding(vocab, 16), backbone
        self.head = torch.nn.Linear(16, n_classes)

    def forward(self, ids):
        h = self.backbone(self.embed(ids), torch.ones_like(ids, dtype=torch.bool))
        return self.head(h.mean(1))


def first_token_batch(n: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A start token (0), then tokens 1..8; the label is the first token after the start, mod 4
    (chance 0.25). A model that does not mix positions sees that token only as one of ten in the
    mean-pooled output, indistinguishable from the others; one that mixes can tag it by its
    neighbour, the start token (found by content, so relative-position models can too)."""
    ids = torch.randint(1, 9, (n, length), generator=gen)
    ids[:, 0] = 0
    return ids, ids[:, 1] % 4


def test_learns_a_small_task(backbone):
    from recipes.train import param_groups

    _, arch, overrides = backbone
    if "chunk_size" in overrides:
        pytest.skip("a performance knob: its equivalence is tested in test_parity.py")
    model = Probe(make(arch, 0, **overrides), vocab=9, n_classes=4).train()
    opt = torch.optim.AdamW(param_groups(model, 3e-3, 0.0))
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        ids, labels = first_token_batch(32, 10, gen)
        loss = torch.nn.functional.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, labels = first_token_batch(512, 10, gen)
    with torch.no_grad():
        acc = (model(ids).argmax(-1) == labels).float().mean().item()
    assert acc > 0.6, f"{arch} {overrides}: accuracy {acc:.2f} after 300 steps (chance 0.25)"


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


@pytest.mark.parametrize("arch, overrides, message", [
    ("s4d", {"init": "hippo"}, "init='hippo' is not one of"),
    ("s4d", {"d_state": 7}, "d_state=7 must be even"),
    ("s4", {"dt_min": 0.5, "dt_max": 0.1}, "need 0 < dt_min <= dt_max"),
    ("s4", {"ssm_lr": -1.0}, "ssm_lr=-1.0 must be positive"),
    ("s4", {"dropout": -0.1}, "dropout=-0.1"),
    ("mamba", {"impl": "triton"}, "impl='triton' is not one of"),
    ("mamba", {"expand": 0}, "expand=0 must be a positive integer"),
    ("mamba", {"d_stat": 8}, "unexpected keyword argument 'd_stat'"),
    ("cnn", {"kernel_size": 4}, "kernel_size=4 must be odd"),
    ("cnn", {"n_layers": 0}, "n_layers=0 must be a positive integer"),
])
def test_bad_options_are_config_errors(arch, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make(arch, **overrides)


def test_cnn_receptive_field_covers_max_len():
    from archs.cnn import CNN

    cases = [(False, 7, 3, 151), (True, 3, 4, 100), (False, 3, 2, 1000), (False, 7, 6, 40), (False, 7, 1, 25),
             (True, 2, 1, 9)]
    for causal, kernel, layers, max_len in cases:
        model = CNN(8, layers, max_len=max_len, kernel_size=kernel, causal=causal)
        assert model.receptive_field >= (max_len if causal else 2 * max_len - 1), model.dilations
    # Enough layers: dense powers of the kernel size, cycled.
    assert CNN(8, 6, max_len=20, kernel_size=7).dilations == [1, 7, 1, 7, 1, 7]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("flip", [False, True], ids=["default", "flipped"])
def test_every_backbone_runs_both_recipes_end_to_end(arch, flip, tmp_path):
    """Through run.py's path: build, pretrain (MLM, or NTP when causal), fine-tune, result.json."""
    from recipes import experiment
    from tests.conftest import make_cfg

    flipped = [f"arch.{k}={str(v).lower()}" for k, v in flipped_direction(arch).items()] if flip else []
    overrides = [f"arch={arch}", "arch.d_model=16", "arch.n_layers=1", *flipped, "recipe=spt", "progress=false",
                 "task.n_train=64", "task.n_val=32", "task.n_test=32", "task.max_length=24",
                 "pretrain.max_steps=3", "finetune.max_steps=3", "pretrain.eval_every=3", "finetune.eval_every=3"]
    result = experiment.run(make_cfg(overrides, tmp_path), tmp_path / "run")
    assert result["status"] == "ok" and 0 <= result["metrics"]["test_acc"] <= 1
    assert result["impl"] == ("cpp" if arch in ("mamba", "s4") and not mamba_cpu.unavailable_reason() else "torch")
    assert result["steps"] == {"pretrain": 3, "finetune": 3}


@pytest.mark.parametrize("arch, ssm_params", [("s4", {"log_dt", "log_A_real", "A_imag", "P", "B"}),
                                              ("s4d", {"log_dt", "log_A_real", "A_imag"}),
                                              ("mamba", {"A_log", "D"})])
def test_ssm_parameters_get_their_own_optimizer_settings(arch, ssm_params):
    """S4/S4D dynamics train at ssm_lr without weight decay; Mamba's A_log and D are never decayed."""
    from recipes.train import param_groups

    model = make(arch)
    groups = param_groups(model, lr=0.01, weight_decay=0.1)
    name_of = {id(p): n.rsplit(".", 1)[-1] for n, p in model.named_parameters()}
    for group in groups:
        names = {name_of[id(p)] for p in group["params"]}
        if names & ssm_params:
            assert names <= ssm_params | {"bias", "weight", "D"} and group["weight_decay"] == 0.0
            expected_lr = config(arch).get("ssm_lr") or 0.01
            assert group["lr"] == expected_lr, (names, group["lr"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
