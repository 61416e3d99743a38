"""recipe=spt: self-pretraining on the task's own train inputs, then fine-tuning — one command.

Stage 1 (`stages.pretrain`) trains the body to predict masked (or next) tokens or pixels of the train
inputs, labels never read, and caches it; stage 2 (`stages.finetune`) trains every weight of that body
under a fresh classifier head, with the same settings as recipe=supervised.
"""

from __future__ import annotations

from recipes.stages import finetune, pretrain

STAGES = ("pretrain", "finetune")


def run(ctx) -> dict:
    body, summary, record, probes = pretrain(ctx)
    result = finetune(ctx, body, prefix_rows=summary["history"])
    probes.take("finetuned", body)
    probes.add_to(result)
    history = summary["history"]
    result["metrics"].update({
        "pretrain_val_loss": summary["best_val"]["loss"], "pretrain_val_acc": summary["best_val"]["acc"],
        "pretrain_first_train_loss": history[0]["train_loss"], "pretrain_last_train_loss": history[-1]["train_loss"],
        "pretrain_best_step": summary["best_step"],
    })
    result["steps"]["pretrain"] = summary["steps"]
    result["stopping"]["pretrain"] = summary.get("stopping")  # None: cached before stages recorded it
    result["skipped_steps"]["pretrain"] = summary["skipped_steps"]
    result["wall_time_s"]["pretrain"] = summary["wall_time_s"]
    result["pretrain"] = record
    return result
