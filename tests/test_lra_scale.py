"""Paper scale for every backbone: each `experiment=lra_<task> arch=<arch>` composes, builds its model
before any data is prepared, and has the parameter count of the published model it follows.

The reference counts are closed forms of the published architectures, written from the published
hyperparameters below (not read from our YAMLs), so a preset that drifts from its source fails here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipes import config_schema, experiment
from recipes.errors import ConfigError
from recipes.model import n_params
from tests.conftest import make_cfg

TASKS = ("listops", "text", "retrieval", "image", "pathfinder", "pathx")
ARCHS = ("transformer", "s4", "s4d", "mamba", "cnn")

# Published models, per task. Transformer: IdoAmos/not-from-scratch transformer-lra-*.yaml
# (layers, width, heads, FF width). S4: state-spaces/s4 configs/experiment/lra/s4-*.yaml (layers, width,
# d_state, n_ssm; null = one per channel). Mamba: fluderm/MLRA mamba-lra-*.yaml (layers, width, d_state,
# MLP expansion of the extra MLP block per layer, 0 = none).
TRANSFORMER = {"listops": (6, 512, 2048), "text": (6, 512, 2048), "retrieval": (4, 128, 512),
               "image": (3, 64, 128), "pathfinder": (4, 128, 128), "pathx": (4, 128, 128)}
S4 = {"listops": (6, 256, 4, 1), "text": (6, 256, 4, 1), "retrieval": (6, 256, 4, 1), "image": (6, 512, 64, 1),
      "pathfinder": (6, 256, 64, None), "pathx": (6, 256, 64, None)}
MLRA = {"listops": (4, 128, 64, 0), "text": (4, 128, 64, 0), "retrieval": (4, 128, 64, 0), "image": (3, 64, 16, 2),
        "pathfinder": (4, 64, 64, 1), "pathx": (4, 64, 64, 1)}


def transformer_params(layers: int, d: int, ff: int) -> int:
    """Pre-LN encoder: qkv and output projections with biases, a two-layer GELU MLP, two norms per
    layer, a final norm."""
    return layers * ((4 * d * d + 4 * d) + (2 * d * ff + ff + d) + 4 * d) + 2 * d


def s4_params(task: str, diagonal: bool) -> int:
    """state-spaces/s4 bidirectional S4 (DPLR: Λ, P, B per SSM) or S4D (diagonal: A, B per SSM) block:
    dt per channel, C per channel and direction, D, the d -> 2d GLU projection, a norm; final norm."""
    layers, d, n, n_ssm = S4[task]
    s = d if n_ssm is None else n_ssm
    ssm = (2 if diagonal else 3) * s * n  # complex (Λ [, P], B) of N/2 entries each, per SSM
    return layers * (d + ssm + 2 * d * n + d + (2 * d * d + 2 * d) + 2 * d) + 2 * d


def mamba_params(task: str) -> int:
    """fluderm/MLRA: per layer one mamba_ssm.Mamba (expand 2, d_conv 4, dt_rank ceil(d/16), no biases
    but conv's and dt_proj's) and, where the config has one, an MLP block; a norm before each; final norm."""
    layers, d, n, mlp = MLRA[task]
    e, r = 2 * d, math.ceil(d / 16)
    mixer = d * 2 * e + (4 * e + e) + e * (r + 2 * n) + (r * e + e) + e * n + e + e * d
    block = mixer + d + ((d * mlp * d + mlp * d) + (mlp * d * d + d) + d if mlp else 0)
    return layers * block + d


# The count each backbone is held to: its published model's, or (CNN, no published setting) S4's.
REFERENCE = {
    "transformer": lambda t: transformer_params(*TRANSFORMER[t]),
    "s4": lambda t: s4_params(t, diagonal=False),
    "s4d": lambda t: s4_params(t, diagonal=True),
    "mamba": mamba_params,
    "cnn": lambda t: s4_params(t, diagonal=False),
}


def paper_cfg(task: str, arch: str, tmp_path, *extra: str):
    return make_cfg([f"experiment=lra_{task}", f"arch={arch}", "recipe=spt", *extra], tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", TASKS)
def test_every_backbone_builds_at_paper_scale_with_its_published_size(tmp_path, task, arch):
    cfg = paper_cfg(task, arch, tmp_path)
    stages = ("pretrain", "finetune")
    config_schema.check(cfg, stages)
    built = experiment.build_task(cfg.task)
    total = experiment.check_model(cfg, built, stages)
    backbone = n_params(experiment.build_body(cfg, built).backbone)
    reference = REFERENCE[arch](task)
    assert abs(backbone - reference) <= 0.10 * reference, f"{task}/{arch}: {backbone:,} vs published {reference:,}"
    assert total > backbone  # encoder and head come on top


def test_a_grid_over_every_backbone_composes_one_distinct_model_per_arch(tmp_path):
    """The issue's failure: lra_* presets held the Transformer's keys, so arch=s4 got `n_heads`."""
    archs = {arch: paper_cfg("listops", arch, tmp_path).arch for arch in ARCHS}
    assert all("n_heads" not in a for name, a in archs.items() if name != "transformer")
    assert {a.d_model for a in archs.values()} == {512, 256, 128}  # Amos, S4 (S4D, CNN), MLRA


def test_a_bad_combination_fails_before_any_data_is_prepared(tmp_path, monkeypatch):
    from tasks.listops import ListOps

    def no_data(*_):
        raise AssertionError("data was prepared before the model was checked")

    monkeypatch.setattr(ListOps, "splits", no_data)
    cfg = paper_cfg("listops", "s4", tmp_path, "+arch.n_heads=8")
    with pytest.raises(ConfigError, match="n_heads"):
        experiment.run(cfg, tmp_path / "run")
    cfg = paper_cfg("listops", "mamba", tmp_path, "pretrain.objective=mlm")  # mamba is causal here
    with pytest.raises(ConfigError, match="objective=mlm with a causal backbone"):
        experiment.run(cfg, tmp_path / "run2")


def test_pathx_transformer_uses_local_attention(tmp_path):
    cfg = paper_cfg("pathx", "transformer", tmp_path)
    backbone = experiment.build_body(cfg, experiment.build_task(cfg.task)).backbone
    assert backbone.block_size == 4096 and all(b.attn.block_size == 4096 for b in backbone.blocks)


def test_default_runs_keep_their_config_hash(tmp_path):
    """New constructor options (S4 n_ssm, Transformer block_size) are not in conf/arch/*.yaml, so runs
    that do not set them resolve to the same config, hence the same hash and folders, as before."""
    for arch in ARCHS:
        plain = experiment.resolve(make_cfg([f"arch={arch}"], tmp_path))
        assert "n_ssm" not in plain["arch"] and "block_size" not in plain["arch"]


@pytest.mark.parametrize("length,block", [(23, 5), (20, 5), (4, 8)])
def test_block_attention_equals_full_attention_restricted_to_neighbouring_blocks(length, block):
    from archs.transformer import block_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, length, 4, dtype=torch.float64) for _ in range(3))
    real = torch.ones(2, length, dtype=torch.bool)
    real[1, length // 2:] = False  # the second sequence is half padding
    i = torch.arange(length)
    pattern = (i[:, None] // block - i[None, :] // block).abs() <= 1  # (L, L)
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=pattern & real[:, None, None, :])
    local = block_attention(q, k, v, real, block, 0.0)
    torch.testing.assert_close(local[0], full[0])
    torch.testing.assert_close(local[1, :, : length // 2], full[1, :, : length // 2])
    assert torch.isfinite(local).all()  # padded query blocks give numbers, not NaN
    torch.testing.assert_close(block_attention(q, k, v, None, block, 0.0),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=pattern))


def test_block_attention_transformer_is_a_transformer_whose_far_positions_do_not_meet():
    from archs.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(16, 1, 0.0, max_len=24, n_heads=2, pos="rotary", block_size=4).eval()
    x = torch.randn(1, 24, 16)
    y = x.clone()
    y[0, 20:] += torch.randn(4, 16)  # block 5 changes: blocks 0-3 cannot see it (one layer), block 4 can
    out_x, out_y = model(x), model(y)
    torch.testing.assert_close(out_x[0, :16], out_y[0, :16])
    assert not torch.allclose(out_x[0, 16:20], out_y[0, 16:20])
    with pytest.raises(ValueError, match="causal=false only"):
        Transformer(16, 1, max_len=8, causal=True, block_size=4)


def test_s4_shared_ssm_matches_per_channel_copies_of_it():
    """n_ssm=1: one (Λ, P, B) for all channels is the per-channel model with every row equal."""
    from archs.s4 import S4

    torch.manual_seed(0)
    shared = S4(8, 1, max_len=32, d_state=4, n_ssm=1, impl="torch")
    torch.manual_seed(0)
    each = S4(8, 1, max_len=32, d_state=4, impl="torch")
    ks, ke = shared.blocks[0].conv.kernel, each.blocks[0].conv.kernel
    with torch.no_grad():
        for name in ("log_A_real", "A_imag", "P", "B"):
            getattr(ks, name).add_(0.1 * torch.randn_like(getattr(ks, name)))
            getattr(ke, name).copy_(getattr(ks, name).expand_as(getattr(ke, name)))
        for name in ("log_dt", "C"):
            getattr(ke, name).copy_(getattr(ks, name))
    torch.testing.assert_close(ks(32), ke(32))
    assert n_params(each) - n_params(shared) == 3 * 7 * 4  # (Λ, P, B): 7 fewer copies of N/2 complex each
    with pytest.raises(ValueError, match="divisor of d_model"):
        S4(8, 1, max_len=8, n_ssm=3)
