"""recipe=supervised_matched: the compute-matched control for SPT. A classifier trained from
scratch, as recipe=supervised, given at least as many optimizer steps as recipe=spt takes in all
(Amos et al., Appendix D, compare SPT and training from scratch at one total budget). A gain of spt
over supervised_matched cannot come from more updates.

Without early stopping (`finetune.patience` null) it runs exactly spt's pretraining cap plus its
fine-tuning cap. With early stopping, "matched" means: the same patience as spt's fine-tuning, a cap
of (the steps spt's pretraining actually took) + the fine-tuning cap, and patience may not end the
run before it has taken as many steps as that pretraining did — so it gets spt's pretraining steps
and then as long as spt's fine-tuning would have to converge. The steps spt's pretraining took are
read from the shared pretraining cache (the same key spt uses); when it is not there yet this run
pretrains it, and the spt runs then reuse it (no compute is spent twice).

The `pretrain` section is read only to count spt's steps, so it is part of this recipe's config
hash; the steps run with the `finetune` settings (lr, warmup, cosine over the whole cap). A
pretraining step and a fine-tuning step at the same batch size cost about the same (the same
body; a token head instead of a pooled classifier), so matched steps are close to matched FLOPs.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from recipes.engine.loop import total_steps
from recipes.extras.probes import Recorder
from recipes.model import build_body
from recipes.schema import combine
from recipes.stages import finetune, pretrain, pretrain_split

STAGES = ("finetune", "pretrain")


def matched_steps(ctx) -> dict:
    """-> {"pretrain": spt's pretraining steps, "finetune": its fine-tuning cap, "total": their sum}.
    With pretrain.patience set, the pretraining steps are those it actually took (running it if needed)."""
    cfg = ctx.cfg
    if cfg.pretrain.get("patience"):
        pre = pretrain(ctx, announce=False)[1]["steps"]
    else:
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
    ctx.announce(body)
    probes = Recorder(ctx)
    probes.take("init", body)
    result = finetune(ctx, body, no_stop_before=steps["pretrain"] if cfg.finetune.get("patience") else 0)
    probes.take("finetuned", body)
    # matched: the spt run this one matches, its pretraining steps and fine-tuning cap
    return combine(result, probes.part(), {"matched": steps})
