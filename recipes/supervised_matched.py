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

import torch
from omegaconf import OmegaConf

from recipes.model import build_body
from recipes.probes import Recorder
from recipes.spt import pretrain_split
from recipes.supervised import finetune
from recipes.train import total_steps

STAGES = ("finetune", "pretrain")


def matched_steps(ctx) -> dict:
    """-> {"pretrain": spt's pretraining steps, "finetune": its fine-tuning steps, "total": their sum}."""
    cfg = ctx.cfg
    pre = total_steps(cfg.pretrain, len(pretrain_split(ctx)[1].documents()))
    fine = total_steps(cfg.finetune, len(ctx.splits["train"]))
    return {"pretrain": pre, "finetune": fine, "total": pre + fine}


def run(ctx) -> dict:
    steps = matched_steps(ctx)
    cfg = ctx.cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.finetune.max_steps = steps["total"]
    torch.manual_seed(ctx.seed)
    body = build_body(cfg, ctx.task)
    ctx.cfg = cfg
    probes = Recorder(ctx)
    probes.take("init", body)
    result = finetune(ctx, body)
    probes.take("finetuned", body)
    result["matched"] = steps  # the spt run this one matches: its two stages' steps
    return probes.add_to(result)
