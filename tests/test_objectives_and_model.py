"""Masking objective, next-token targets, pooling and model assembly."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from recipes.errors import ConfigError
from recipes.model import Body, Classifier, TokenPredictor, pool, pooling_for
from recipes.objectives import IGNORE, mask_tokens, next_token_targets, token_loss
from recipes.stages import objective_for
from tasks.listops import ListOps


def batch(b=64, length=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 17, (b, length), generator=g)
    lengths = torch.randint(5, length + 1, (b,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 0), mask


def test_masking_touches_only_real_positions_and_honours_the_ratio():
    ids, mask = batch(b=400)
    inputs, targets = mask_tokens(ids, mask, 0.1, mask_id=1, generator=torch.Generator().manual_seed(0))
    chosen = targets != IGNORE
    assert not (chosen & ~mask).any()  # never a pad position
    assert (inputs[chosen] == 1).all() and torch.equal(inputs[~chosen], ids[~chosen])
    assert torch.equal(targets[chosen], ids[chosen])
    assert chosen.any(1).all()  # every sequence contributes
    ratio = chosen.sum().item() / mask.sum().item()
    assert 0.09 < ratio < 0.115, ratio  # ~88k real tokens: Bernoulli(0.1) is within this band


def test_loss_counts_only_masked_positions():
    ids, mask = batch(b=8)
    inputs, targets = mask_tokens(ids, mask, 0.2, mask_id=1, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(*ids.shape, 17)
    loss, correct, count = token_loss(logits, targets)
    changed = logits.clone()
    changed[targets == IGNORE] = torch.randn_like(changed[targets == IGNORE]) * 50
    assert torch.equal(token_loss(changed, targets)[0], loss)
    assert count.item() == (targets != IGNORE).sum().item()


def test_next_token_targets():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert next_token_targets(ids, mask).tolist() == [[6, 7, IGNORE, IGNORE], [9, 10, 11, IGNORE]]


def test_objective_follows_causality_and_rejects_mismatch():
    assert objective_for("auto", causal=False) == "mlm" and objective_for("auto", causal=True) == "ntp"
    with pytest.raises(ConfigError, match="needs a causal backbone"):
        objective_for("ntp", causal=False)
    with pytest.raises(ConfigError, match="causal backbone"):
        objective_for("mlm", causal=True)


def test_pooling_ignores_padding():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(pool(h, mask, "mean")[0], h[0, :2].mean(0))
    torch.testing.assert_close(pool(h, mask, "last")[0], h[0, 1])
    torch.testing.assert_close(pool(h, mask, "last")[1], h[1, 4])


def make_classifier(pooling="mean", causal=False):
    from recipes.model import build_body

    task = ListOps(n_train=10, n_val=5, n_test=5, min_length=4, max_length=30, max_len=30)
    cfg = OmegaConf.create({
        "arch": {"_target_": "archs.transformer.Transformer", "name": "transformer", "d_model": 16, "n_layers": 1,
                 "dropout": 0.0, "n_heads": 2, "causal": causal},
        "model": {"pooling": pooling},
    })
    torch.manual_seed(0)
    body = build_body(cfg, task)
    return Classifier(body, 16, 10, pooling_for(cfg.model, causal)).eval(), body


@pytest.mark.parametrize("pooling, causal", [("mean", False), ("cls", False), ("last", True), ("auto", True)])
def test_classifier_logits_ignore_padding(pooling, causal):
    model, _ = make_classifier(pooling, causal)
    ids, mask = batch(b=4, length=30)
    logits = model(ids, mask)
    garbage = ids.masked_fill(~mask, 5)  # change only padded content
    torch.testing.assert_close(model(garbage, mask), logits)
    one = model(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
    torch.testing.assert_close(one, logits[:1], atol=1e-5, rtol=1e-5)


def test_cls_pooling_with_causal_backbone_is_rejected():
    with pytest.raises(ConfigError, match="pooling=cls with a causal backbone"):
        make_classifier("cls", causal=True)


def test_pretrained_body_fits_classifier_of_any_pooling():
    _, body = make_classifier("mean")
    predictor = TokenPredictor(body, 16, 17)
    weights = predictor.body.state_dict()
    for pooling in ("mean", "cls"):
        _, fresh = make_classifier(pooling)
        fresh.load_state_dict(weights)  # same shapes: the body always reserves the CLS slot
    assert isinstance(body, Body)


def test_pixel_encoder_reads_values_and_a_mask_channel():
    from tasks.base import PixelEncoder

    enc = PixelEncoder(256, 8)
    ids = torch.tensor([[0, 255, 257, 256]])  # black, white, masked, pad
    weight, bias = enc.proj.weight, enc.proj.bias  # (D, 2), (D,): columns value and mask
    out = enc(ids)
    torch.testing.assert_close(out[0, 0], bias)
    torch.testing.assert_close(out[0, 1], weight[:, 0] + bias)
    torch.testing.assert_close(out[0, 2], weight[:, 1] + bias)  # a hidden value reads 0, the mask channel 1
    embed = PixelEncoder(256, 8, "embed")
    assert embed(ids).shape == (1, 4, 8) and torch.equal(embed(ids)[0, 3], torch.zeros(8))


def test_pixel_l1_loss_on_masked_positions_only():
    from recipes.objectives import pixel_l1_loss

    targets = torch.tensor([[255, IGNORE, 0, 51]])
    pred = torch.tensor([[[1.0], [9.0], [0.5], [0.2]]])
    loss, correct, count = pixel_l1_loss(pred, targets, 256)
    torch.testing.assert_close(loss, torch.tensor((0.0 + 0.5 + 0.0) / 3))  # 51/255 = 0.2 exactly
    assert correct.item() == 2 and count.item() == 3


def test_pixel_loss_applies_to_pixel_tasks_only():
    from recipes.stages import pixel_loss_for
    from tasks.pathfinder import Pathfinder

    pixels, tokens = Pathfinder(n_train=2, n_val=2, n_test=2).spec, ListOps().spec
    assert pixel_loss_for(None, pixels) == "ce" and pixel_loss_for("l1", pixels) == "l1"
    assert pixel_loss_for(None, tokens) is None
    with pytest.raises(ConfigError, match="pixel_loss='l1' applies to pixel tasks only"):
        pixel_loss_for("l1", tokens)


def test_two_tower_classifier_shares_one_body_and_ignores_padding():
    from recipes.model import DualClassifier, build_body

    task = ListOps(n_train=10, n_val=5, n_test=5, min_length=4, max_length=30, max_len=30)
    cfg = OmegaConf.create({"arch": {"_target_": "archs.transformer.Transformer", "name": "transformer",
                                     "d_model": 16, "n_layers": 1, "dropout": 0.0, "n_heads": 2}})
    torch.manual_seed(0)
    model = DualClassifier(build_body(cfg, task), 16, 2, "mean").eval()
    ids, mask = batch(b=6, length=30)
    pair_ids, pair_mask = torch.stack([ids[:3], ids[3:]], 1), torch.stack([mask[:3], mask[3:]], 1)  # (3, 2, 30)
    logits = model(pair_ids, pair_mask)
    assert logits.shape == (3, 2)
    torch.testing.assert_close(model(pair_ids.masked_fill(~pair_mask, 7), pair_mask), logits)  # padding is inert
    # Each document is encoded alone: u of pair 0 is the pooled body output of that document only.
    h, m = model.body(ids[:1, : int(mask[0].sum())], mask[:1, : int(mask[0].sum())])
    u = pool(h, m, "mean")
    h2, m2 = model.body(ids[3:4, : int(mask[3].sum())], mask[3:4, : int(mask[3].sum())])
    v = pool(h2, m2, "mean")
    torch.testing.assert_close(model.head(torch.cat([u, v, u * v, u - v], -1)), logits[:1], atol=1e-5, rtol=1e-5)
