"""Conformance over the registry: every conf/arch/*.yaml (and its causal/position variants) must
meet the backbone contract, checked by archs/conformance.py (the same checks `python -m recipes.check_arch`
runs on plugins). A new backbone gets these checks by adding its YAML."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from archs import conformance, mamba_cpu
from recipes.errors import ConfigError
from recipes.model import build_backbone

ARCH_DIR = Path(__file__).resolve().parent.parent / "conf" / "arch"
ARCHS = sorted(p.stem for p in ARCH_DIR.glob("*.yaml"))


def flipped_direction(arch: str) -> dict:
    """The override that turns an arch's default direction around: `causal` or `bidirectional`."""
    return conformance.flipped_direction(OmegaConf.load(ARCH_DIR / f"{arch}.yaml"))


# Options worth covering beyond each YAML's defaults: (arch, overrides).
VARIANTS = [(a, {}) for a in ARCHS] + [(a, flipped_direction(a)) for a in ARCHS if flipped_direction(a)] + [
    ("transformer", {"pos": p}) for p in ("learned", "sinusoidal", "rotary")
] + [("s4d", {"init": i}) for i in ("lin", "legs")] + [
    ("mamba", {"impl": "torch", "chunk_size": 7}), ("s4", {"impl": "torch"}),  # the PyTorch paths; default is cpp
    ("mamba", {"tie_projections": True}),
]


def config(arch: str, **overrides):
    cfg = OmegaConf.load(ARCH_DIR / f"{arch}.yaml")
    return OmegaConf.merge(cfg, {k: v for k, v in conformance.SMALL.items() if k in cfg}, overrides)


def make(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_backbone(config(arch, **overrides), max_len=conformance.MAX_LEN).eval()


def ids(variant):
    return f"{variant[0]}-" + "-".join(f"{k}={v}" for k, v in variant[1].items())


@pytest.fixture(params=VARIANTS, ids=ids)
def variant(request):
    """(make(seed) -> backbone, declared causal, arch, overrides) for one variant."""
    arch, overrides = request.param
    return (partial(make, arch, **overrides), conformance.declared_causal(config(arch, **overrides)), arch,
            overrides)


def test_registry_holds_the_four_families():
    assert {"transformer", "s4", "s4d", "mamba", "cnn"} <= set(ARCHS)


@pytest.mark.parametrize("check", [c for c in conformance.CHECKS if c != "learns a small task"])
def test_conformance(variant, check):
    """Shapes and gradients, padding invariance, direction, state-dict round trip, determinism."""
    build, causal, _, _ = variant
    conformance.CHECKS[check](build, causal)


@pytest.mark.slow
def test_learns_a_small_task(variant):
    build, causal, _, overrides = variant
    if "chunk_size" in overrides:
        pytest.skip("a performance knob: its equivalence is tested in test_parity.py")
    conformance.learns_a_small_task(build, causal)


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


@pytest.mark.slow
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
    from recipes.engine.loop import param_groups

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


def test_flip_within_reverses_real_positions_and_its_gradient_is_the_same_flip():
    """Its backward is hand-written (the permutation is its own inverse): checked against autograd."""
    from archs.mamba import flip_within

    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = flip_within(x, mask)
    assert torch.equal(y[0, :3], x[0, [2, 1, 0]]) and torch.equal(y[0, 3:], x[0, 3:])
    assert torch.equal(y[1], x[1].flip(0))
    assert torch.autograd.gradcheck(lambda t: flip_within(t, mask), (x,))
