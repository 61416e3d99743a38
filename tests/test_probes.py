"""Locality probes (recipes/extras/probes.py) against known answers: hand-set attention (identity, uniform),
convolutions whose influence support and profile are known in closed form, one- vs two-sided
profiles, padding that never enters, and probes that never change what a run trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from archs.cnn import CNN
from archs.transformer import Attention, Transformer
from recipes import config_schema, experiment
from recipes.engine import checkpoint
from recipes.errors import ConfigError
from recipes.extras import probes
from tasks.base import TokenSplit
from tests.conftest import make_cfg, tiny

PAD, D = 0, 8


def split_of(lengths, seed=0) -> TokenSplit:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, 10, n) for n in lengths]
    return TokenSplit(tokens=np.concatenate(seqs), offsets=np.concatenate([[0], np.cumsum(lengths)]),
                      labels=np.zeros(len(lengths), dtype=np.int64))


class Body(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.encoder, self.backbone = nn.Embedding(10, D), backbone


class HandSet(nn.Module):
    """An attention module offering the probe hook, whose weights are set by hand over the real keys."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.keep_weights, self.weights = kind, False, None

    def forward(self, x, mask):
        b, n = mask.shape
        if self.kind == "identity":
            w = torch.eye(n).expand(b, 1, n, n)
        else:  # uniform over the real keys
            w = mask[:, None, None, :].float().expand(b, 1, n, n)
            w = w / w.sum(-1, keepdim=True)
        if self.keep_weights:
            self.weights = w.clone()
        return x


class HandSetBackbone(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.attn = HandSet(kind)

    def forward(self, x, mask=None):
        return self.attn(x, mask)


@pytest.mark.parametrize("length", [1, 5, 17])
def test_attention_distance_of_hand_set_attention_has_its_closed_form(length):
    docs = split_of([length, length])
    ident = probes.attention_probe(Body(HandSetBackbone("identity")), docs, PAD, window=2, device=torch.device("cpu"))
    assert ident["distance"] == [[0.0]] and ident["entropy"] == [[0.0]] and ident["local_share"] == [[1.0]]
    uni = probes.attention_probe(Body(HandSetBackbone("uniform")), docs, PAD, window=2, device=torch.device("cpu"))
    assert uni["distance"][0][0] == pytest.approx((length**2 - 1) / (3 * length))
    assert uni["entropy"][0][0] == pytest.approx(math.log(length))
    inside = sum(min(i + 2, length - 1) - max(i - 2, 0) + 1 for i in range(length)) / length**2
    assert uni["local_share"][0][0] == pytest.approx(inside)
    assert uni["n_queries"] == 2 * length


def test_uniform_attention_over_documents_of_several_lengths_averages_over_real_queries():
    docs = split_of([3, 10])
    uni = probes.attention_probe(Body(HandSetBackbone("uniform")), docs, PAD, window=0, device=torch.device("cpu"))
    expected = (3 * (9 - 1) / 9 + 10 * (100 - 1) / 30) / 13  # each query weighs the same
    assert uni["distance"][0][0] == pytest.approx(expected)


@pytest.mark.parametrize("causal", [False, True])
def test_transformer_hook_gives_the_fused_kernels_output_and_a_distribution_over_real_keys(causal):
    torch.manual_seed(0)
    attn = Attention(16, 4, 0.0, causal, None).eval()
    x = torch.randn(2, 7, 16)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    allowed = mask[:, None, None, :] & (torch.ones(7, 7, dtype=torch.bool).tril() if causal else True)
    fused = attn(x, allowed)
    attn.keep_weights = True
    kept = attn(x, allowed)
    assert torch.allclose(fused, kept, atol=1e-5)
    w = attn.weights
    assert w.shape == (2, 4, 7, 7) and torch.allclose(w.sum(-1), torch.ones(2, 4, 7))
    assert (w[1, :, :, 4:] == 0).all()  # no query attends to a padded key
    if causal:
        assert (w.triu(1) == 0).all()


def test_a_transformer_yields_one_attention_entry_per_layer_and_head():
    body = Body(Transformer(D, 3, 0.0, max_len=20, n_heads=2, pos="learned"))
    out = probes.measure(body, split_of([6, 12, 9]), type("S", (), {"pad_id": PAD})(), {
        **probes.DEFAULTS, "n_examples": 3, "split": "val"}, torch.device("cpu"))
    att = out["attention"]
    assert np.array(att["distance"]).shape == (3, 2) and att["n_queries"] == 27
    assert all(not m.keep_weights and m.weights is None for m in probes.attention_modules(body.backbone))
    assert "attention" not in probes.measure(Body(CNN(D, 1, max_len=20)), split_of([6, 12, 9]),
                                             type("S", (), {"pad_id": PAD})(),
                                             {**probes.DEFAULTS, "split": "val"}, torch.device("cpu"))


class CausalDepthwise(nn.Module):
    """h_t = sum_{j<k} w_j * x_{t-j} (per channel): dh_t/dx_{t-j} = diag(w_j), so ||.||_F = ||w_j||."""

    causal = True

    def __init__(self, k: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(k, D))

    def forward(self, x, mask=None):
        h = torch.zeros_like(x)
        for j in range(self.w.shape[0]):
            h[:, j:] += self.w[j] * x[:, : x.shape[1] - j]
        return h


def influence(net, lengths, directions=None, chunk=probes.CHUNK, positions=4):
    """The influence probe of a backbone, or of a Body (to probe one encoder twice)."""
    body = net if isinstance(net, Body) else Body(net)
    return probes.influence_probe(body, split_of(lengths), PAD, positions, directions, 0, torch.device("cpu"),
                                  chunk=chunk)


def test_causal_convolution_has_its_closed_form_profile_and_nothing_beyond_its_width():
    torch.manual_seed(0)
    conv = CausalDepthwise(3)
    out = influence(conv, [12, 20, 16], positions=20)
    prof = dict(zip(out["offsets"], out["profile"]))
    norms = conv.w.detach().norm(dim=1).double()
    for k, v in prof.items():
        assert v == pytest.approx(float(norms[k]) if 0 <= k < 3 else 0.0, abs=1e-6), k
    assert out["mean_distance"] == pytest.approx(float((norms * torch.arange(3)).sum() / norms.sum()))
    off = norms[1:]
    assert out["mean_distance_offdiag"] == pytest.approx(float((off * torch.arange(1, 3)).sum() / off.sum()))
    cum = norms.cumsum(0) / norms.sum()
    assert out["half_mass_distance"] == int((cum < 0.5).sum())


@pytest.mark.parametrize("causal", [True, False])
def test_a_cnns_influence_lies_on_its_taps_one_sided_when_causal(causal):
    torch.manual_seed(0)
    net = CNN(D, 1, max_len=9, kernel_size=3, causal=causal)  # one block: dilation spreads its 3 taps over 9
    d = net.dilations[0]
    taps = {0, d, 2 * d} if causal else {-d, 0, d}
    out = influence(net, [9, 9], positions=9)
    for k, v in zip(out["offsets"], out["profile"]):
        assert (v > 1e-6) == (k in taps), (k, v)
    assert (min(k for k, v in zip(out["offsets"], out["profile"]) if v > 1e-6) < 0) != causal


@pytest.mark.parametrize("causal", [True, False])
def test_a_transformers_profile_is_one_sided_when_causal_and_two_sided_otherwise(causal):
    torch.manual_seed(0)
    out = influence(Transformer(D, 2, 0.0, max_len=30, n_heads=2, causal=causal), [10, 25, 17])
    future = sum(v for k, v in zip(out["offsets"], out["profile"]) if k < 0)
    past = sum(v for k, v in zip(out["offsets"], out["profile"]) if k > 0)
    assert past > 0 and (future == 0 if causal else future > 0)


@pytest.mark.parametrize("make", [lambda: Transformer(D, 2, 0.0, max_len=30, n_heads=2),
                                  lambda: CNN(D, 2, max_len=30)])
def test_padding_never_enters_the_influence_probe(make):
    """Each document probed alone (no padding) or batched with longer ones (padded): the same profile."""
    torch.manual_seed(0)
    net = Body(make()).eval()
    alone, batched = influence(net, [4, 25, 11, 30], chunk=1), influence(net, [4, 25, 11, 30], chunk=4)
    assert alone["offsets"] == batched["offsets"]
    assert np.allclose(alone["profile"], batched["profile"], rtol=1e-5, atol=1e-7)


def test_random_directions_estimate_the_exact_norm():
    torch.manual_seed(0)
    net = Body(Transformer(D, 1, 0.0, max_len=30, n_heads=2)).eval()
    exact, est = influence(net, [20, 24]), influence(net, [20, 24], directions=64)
    assert est["mean_distance"] == pytest.approx(exact["mean_distance"], rel=0.15)
    assert est["mean_distance"] != exact["mean_distance"]


@pytest.mark.parametrize("bad", ["probes.n_examples=0", "probes.directions=0", "probes.window=-1",
                                 "probes.enabled=maybe", "+probes.width=3"])
def test_bad_probe_settings_are_one_line(tmp_path, bad):
    with pytest.raises(ConfigError, match="probes"):
        config_schema.check(make_cfg(tiny("supervised", bad), tmp_path), ("finetune",))


QUICK = ["finetune.epochs=2", "pretrain.epochs=2", "probes.n_examples=6"]


@pytest.mark.slow
def test_probes_are_recorded_for_every_stage_and_never_change_training(tmp_path):
    on = experiment.run(make_cfg(tiny("spt", *QUICK), tmp_path), tmp_path / "on")
    off = experiment.run(make_cfg(tiny("spt", *QUICK, "probes.enabled=false"), tmp_path / "x"), tmp_path / "off")
    assert "probes" not in off and on["config_hash"] == off["config_hash"]
    assert on["metrics"] == off["metrics"]  # bitwise: probing consumed no random number, moved no weight
    stages = on["probes"]["stages"]
    assert set(stages) == {"init", "pretrained", "finetuned"}
    assert stages["init"]["attention"]["distance"] != stages["finetuned"]["attention"]["distance"]
    # The pretraining's probes are stored with it, and a run reusing the pretraining reuses them.
    stored = checkpoint.read_json(tmp_path / "_cache" / "pretrain" / on["pretrain"]["key"] / "probes.json")
    assert stored["stages"] == {k: stages[k] for k in ("init", "pretrained")}
    sup = experiment.run(make_cfg(tiny("supervised", *QUICK), tmp_path), tmp_path / "sup")
    assert set(sup["probes"]["stages"]) == {"init", "finetuned"}
    assert sup["probes"]["stages"]["init"] == stages["init"]  # the same seed builds the same body


@pytest.mark.slow
def test_a_complete_run_without_probes_gets_the_same_probes_from_its_checkpoints(tmp_path):
    for recipe in ("spt", "supervised"):
        cfg = make_cfg(tiny(recipe, *QUICK), tmp_path)
        first = experiment.run(cfg, tmp_path / recipe)
        path = tmp_path / recipe / "result.json"
        checkpoint.write_json(path, {k: v for k, v in first.items() if k != "probes"})
        for stored in (tmp_path / "_cache" / "pretrain").glob("*/probes.json"):
            stored.unlink()
        again = experiment.run(cfg, tmp_path / recipe)
        assert again["probes"]["added_from_checkpoints"] is True
        assert again["probes"]["stages"] == first["probes"]["stages"]
        assert checkpoint.read_json(path)["probes"]["stages"] == first["probes"]["stages"]
        assert again["metrics"] == first["metrics"]


def test_the_hook_under_block_attention_keeps_the_blocks_pattern():
    torch.manual_seed(0)
    attn = Attention(16, 2, 0.0, False, None, block_size=3).eval()
    x = torch.randn(2, 10, 16)
    mask = torch.tensor([[True] * 10, [True] * 7 + [False] * 3])
    allowed = mask[:, None, None, :]
    blocked = attn(x, allowed)
    attn.keep_weights = True
    kept = attn(x, allowed)
    assert torch.allclose(blocked, kept, atol=1e-5)
    pos = torch.arange(10) // 3
    far = (pos[:, None] - pos[None, :]).abs() > 1
    assert (attn.weights[:, :, far] == 0).all() and (attn.weights[1, :, :, 7:] == 0).all()
