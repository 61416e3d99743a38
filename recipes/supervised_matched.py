"""recipe=supervised_matched: the compute-matched control for SPT. A classifier trained from
scratch, as recipe=supervised, for as many optimizer steps as recipe=spt takes in all: its
pretraining steps plus its fine-tuning steps under the same config. A gain of spt over
supervised_matched cannot come from more updates (Amos et al., Appendix D, compare SPT and
training from scratch at one total budget).

The `pretrain` section is read only to count spt's steps, so it is part of this recipe's config
hash; the steps run with the `finetune` settings (lr, warmup, cosine over the whole run). A
pretraining step and a fine-tuning step at the same batch size cost about the same (the same
body; a token head instead of a pooled classifier), so matched steps are close to matched FLOPs.
"""

from __future__ import annotations

import math

import torch
from omegaconf import OmegaConf

from recipes.errors import ConfigError
from recipes.model import build_body
from recipes.spt import INPUTS
from recipes.supervised import finetune

STAGES = ("finetune", "pretrain")


def stage_steps(hp, n_examples: int) -> int:
    """Optimizer steps of one stage, as recipes/train.py's fit counts them."""
    return int(hp.max_steps) if hp.get("max_steps") else int(hp.epochs) * math.ceil(n_examples / hp.batch_size)


def matched_steps(ctx) -> dict:
    """-> {"pretrain": spt's pretraining steps, "finetune": its fine-tuning steps, "total": their sum}."""
    cfg = ctx.cfg
    inputs = cfg.pretrain.get("inputs", "labelled")
    if inputs not in INPUTS:
        raise ConfigError(f"pretrain.inputs={inputs!r} is not one of {', '.join(INPUTS)}")
    docs = (ctx.full_train if inputs == "all_train" and ctx.full_train is not None else ctx.splits["train"]).documents()
    pre = stage_steps(cfg.pretrain, len(docs))
    fine = stage_steps(cfg.finetune, len(ctx.splits["train"]))
    return {"pretrain": pre, "finetune": fine, "total": pre + fine}


def run(ctx) -> dict:
    steps = matched_steps(ctx)
    cfg = ctx.cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.finetune.max_steps = steps["total"]
    torch.manual_seed(ctx.seed)
    body = build_body(cfg, ctx.task)
    ctx.cfg = cfg
    result = finetune(ctx, body)
    result["matched"] = steps  # the spt run this one matches: its two stages' steps
    return result
