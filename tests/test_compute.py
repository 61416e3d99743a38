"""The `compute:` settings: each changes how a run computes, not what — checked against the plain
path — and is recorded in result.json; bad values are one-line errors. Also the fused attention
(scaled_dot_product_attention) against attention written out."""

from __future__ import annotations

import math

import pytest
import torch

from archs.transformer import Transformer
from recipes import experiment
from recipes.engine import compute
from recipes.engine.compute import Compute
from recipes.errors import ConfigError
from tests.conftest import make_cfg, tiny
from tests.test_recipes import rows

QUICK = ["finetune.max_steps=12", "finetune.eval_every=6", "task.n_train=300", "task.n_val=100", "task.n_test=100"]


@pytest.mark.slow
def test_loader_workers_and_micro_batches_train_like_the_plain_loop(tmp_path):
    plain = experiment.run(make_cfg(tiny("supervised", *QUICK), tmp_path), tmp_path / "plain")
    other = experiment.run(make_cfg(tiny("supervised", *QUICK, "compute.num_workers=1", "compute.micro_batch_size=5"),
                                    tmp_path), tmp_path / "other")
    assert other["config_hash"] == plain["config_hash"]  # how, not what: one configuration
    hw = other["hardware"]
    assert (hw["num_workers"], hw["micro_batch_size"], hw["precision"], hw["world_size"]) == (1, 5, "fp32", 1)
    assert other["metrics"]["val_acc"] == plain["metrics"]["val_acc"]
    assert other["metrics"]["test_loss"] == pytest.approx(plain["metrics"]["test_loss"], abs=1e-5)
    for a, b in zip(rows(tmp_path / "plain" / "metrics.jsonl"), rows(tmp_path / "other" / "metrics.jsonl")):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5) and b["train_acc"] == a["train_acc"]


def test_bf16_autocast_runs_on_cpu_and_is_recorded(tmp_path):
    result = experiment.run(make_cfg(tiny("supervised", *QUICK, "compute.precision=bf16"), tmp_path), tmp_path / "r")
    assert result["status"] == "ok" and result["hardware"]["precision"] == "bf16"
    assert math.isfinite(result["metrics"]["test_loss"])
    with Compute(precision="bf16").autocast(torch.device("cpu")):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.bfloat16  # the matmuls really run in bf16
    cpu = torch.device("cpu")
    assert compute.resolve(make_cfg(tiny("supervised"), tmp_path).compute, cpu).precision == "fp32"  # auto on CPU


@pytest.mark.parametrize("override, message", [
    ("compute.precision=fp64", "compute.precision='fp64' is not one of auto, fp32, bf16, fp16"),
    ("compute.precision=fp16", "compute.precision=fp16 needs CUDA"),
    ("compute.micro_batch_size=0", "compute.micro_batch_size=0 must be a positive integer or null"),
    ("compute.num_workers=-1", "compute.num_workers=-1 must be an integer >= 0"),
    ("compute.pin_memory=true", "compute.pin_memory=true only helps copies to a GPU"),
    ("compute.compile=maybe", "compute.compile='maybe' must be true or false"),
])
def test_bad_compute_values_are_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        experiment.run(make_cfg(tiny("supervised", override), tmp_path), tmp_path / "r")
    assert not (tmp_path / "r" / "result.json").exists()


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_attention_written_out(causal):
    torch.manual_seed(0)
    model = Transformer(16, 1, 0.0, max_len=10, n_heads=2, pos="sinusoidal", causal=causal).eval()
    x, mask = torch.randn(3, 10, 16), torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    attn = model.blocks[0].attn
    seen = {}
    attn.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0], allowed=inputs[1], y=out))
    model(x, mask)
    q, k, v = attn.qkv(seen["x"]).view(3, 10, 3, 2, 8).permute(2, 0, 3, 1, 4)  # each (B, H, L, E)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    allowed = mask[:, None, None, :] & (torch.ones(10, 10, dtype=torch.bool).tril() if causal else True)
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    assert torch.allclose(seen["y"], attn.out(y.transpose(1, 2).reshape(3, 10, 16)), atol=1e-5)
