"""recipe=supervised: a classifier trained from scratch. Also the fine-tuning stage of SPT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from archs.base import is_causal
from recipes import export
from recipes.model import Body, build_body, build_classifier, n_params, pooling_for
from recipes.probes import Recorder
from recipes.train import Stage, evaluate, fit

STAGES = ("finetune",)  # config sections this recipe runs; the others stay out of its hash


def classify_loss(model: nn.Module, ids: Tensor, mask: Tensor, labels: Tensor):
    """-> (cross-entropy, n correct, n examples) of model(ids, mask) (B, C) against labels (B,).
    ids and mask are (B, L), or (B, 2, L) for dual-input tasks."""
    logits = model(ids, mask)
    loss = F.cross_entropy(logits.float(), labels)
    return loss, (logits.argmax(-1) == labels).sum(), torch.tensor(labels.numel())


def finetune(ctx, body: Body, prefix_rows: list[dict] = (), no_stop_before: int = 0) -> dict:
    """Train a fresh classification head on `body` (all weights trainable); test the weights best on val."""
    cfg, spec = ctx.cfg, ctx.task.spec
    pooling = pooling_for(cfg.model, is_causal(body.backbone))
    torch.manual_seed(ctx.seed)  # the head's init must not depend on whether pretraining was cached
    model = build_classifier(body, cfg.arch.d_model, spec, pooling)
    hp = cfg.finetune
    summary = fit(Stage("finetune", model, classify_loss, classify_loss, "acc"), ctx.splits["train"],
                  ctx.splits["val"], hp, ctx.run_dir / "checkpoints", seed=ctx.seed, identity=ctx.identity,
                  pad_id=spec.pad_id, device=ctx.device, log_path=ctx.run_dir / "metrics.jsonl",
                  prefix_rows=list(prefix_rows), progress=ctx.progress, compute=ctx.compute,
                  no_stop_before=no_stop_before)
    test = evaluate(model, classify_loss, ctx.splits["test"], hp.eval_batch_size, spec.pad_id, ctx.device,
                    ctx.compute)
    return {
        "metrics": {"val_acc": summary["best_val"]["acc"], "val_loss": summary["best_val"]["loss"],
                    "test_acc": test["acc"], "test_loss": test["loss"], "best_step": summary["best_step"]},
        "params": {"total": n_params(model), "backbone": n_params(body.backbone)},
        "steps": {"finetune": summary["steps"]},  # taken: the cap, or fewer when patience stopped the stage
        "stopping": {"finetune": summary.get("stopping")},  # cap, where and why it stopped, converged
        "wall_time_s": {"finetune": summary["wall_time_s"]},
        # Which implementation ran (e.g. Mamba's fused CUDA kernels or the PyTorch path).
        "impl": str(getattr(body.backbone, "impl", "torch")),
        "skipped_steps": {"finetune": summary["skipped_steps"]},  # batches dropped by on_nan=skip_batch
    }


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
    return probes.add_to({**result, "init_from": source} if source else result)
