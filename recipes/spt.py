"""recipe=spt: self-pretraining on the task's own train inputs, then fine-tuning — one command.

Stage 1 (`stages.pretrain`) trains the body to predict masked (or next) tokens or pixels of the train
inputs, labels never read, and caches it; stage 2 (`stages.finetune`) trains every weight of that body
under a fresh classifier head, with the same settings as recipe=supervised.
"""

from __future__ import annotations

from recipes.schema import combine
from recipes.stages import finetune, pretrain, pretrain_part

STAGES = ("pretrain", "finetune")


def run(ctx) -> dict:
    body, summary, record, probes = pretrain(ctx)
    result = finetune(ctx, body, prefix_rows=summary["history"])
    probes.take("finetuned", body)
    return combine(result, probes.part(), pretrain_part(summary, record))
