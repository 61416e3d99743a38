"""recipe=supervised: a classifier trained from scratch (`stages.finetune` on a freshly built body)."""

from __future__ import annotations

import torch

from recipes.extras import export
from recipes.extras.probes import Recorder
from recipes.model import build_body
from recipes.schema import combine
from recipes.stages import finetune

STAGES = ("finetune",)  # config sections this recipe runs; the others stay out of its hash


def run(ctx) -> dict:
    torch.manual_seed(ctx.seed)
    body = build_body(ctx.cfg, ctx.task)
    source = ctx.identity["config"]["finetune"].get("init_from")  # experiment.hashed_config checked it
    if source:  # a shared pretrained body instead of a random one
        source = export.load_body(body, ctx.cfg.finetune.init_from, source, ctx.task.spec)
    ctx.announce(body)
    probes = Recorder(ctx)
    probes.take("pretrained" if source else "init", body)  # a shared body is a pretrained one
    result = finetune(ctx, body)
    probes.take("finetuned", body)  # the best-on-validation weights, the ones tested
    return combine(result, probes.part(), {"init_from": source} if source else {})
