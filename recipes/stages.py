"""The two stages every recipe composes, and what they share: `pretrain` (self-pretraining on the
task's own train inputs, or its cached result) and `finetune` (a fresh classifier head on a body, tested
at its best-on-validation weights). Recipes (supervised.py, spt.py, supervised_matched.py, a user's own)
call these and import nothing from each other.

pretrain: Body + a token-prediction head, masked-token prediction (MLM) for bidirectional backbones,
next-token prediction (NTP) for causal ones, on the *train split inputs only* (labels are never read);
validation inputs choose the best checkpoint by masked-token loss. On pixel tasks the head predicts the
hidden pixel: cross-entropy over the levels or L1 on the value (`pretrain.pixel_loss`, default the
task's). On dual-input tasks (Retrieval) it pretrains on every document on its own. The pretrained Body
is cached in `<cache_dir>/pretrain/<key>/`, where key hashes everything it depends on — task data, arch,
pretraining hyperparameters, pretraining seed — and nothing from fine-tuning. Runs that differ only in
fine-tuning reuse it; set `pretrain.seed=0` to share one pretraining across fine-tuning seeds.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from archs.base import is_causal
from recipes.engine import checkpoint, distributed
from recipes.engine.loop import NEW_WHEN_SET, Stage, evaluate, fit
from recipes.errors import ConfigError
from recipes.extras import track
from recipes.extras.probes import Recorder
from recipes.model import Body, TokenPredictor, build_body, build_classifier, n_params, pooling_for
from recipes.objectives import mask_tokens, next_token_targets, pixel_l1_loss, token_loss
from recipes.schema import combine, digest, stage_part

log = logging.getLogger(__name__)
OBJECTIVES = ("auto", "mlm", "ntp")
# Which train inputs pretraining reads: `labelled`, the examples fine-tuning trains on (with
# task.train_fraction < 1, only those: what "self" means); `all_train`, every train input, the
# labelled subset's and the rest's (a semi-supervised variant, not self-pretraining).
INPUTS = ("labelled", "all_train")


def pretrain_split(ctx):
    """-> (pretrain.inputs, the split whose documents pretraining reads), per INPUTS."""
    inputs = ctx.cfg.pretrain.get("inputs", "labelled")
    return inputs, ctx.full_train if inputs == "all_train" and ctx.full_train is not None else ctx.splits["train"]


def objective_for(requested: str, causal: bool, arch=None) -> str:
    """The pretraining objective for a backbone of this direction. `arch` (its config), when given,
    names the backbone's own direction option in the hint."""
    if requested == "auto":
        return "ntp" if causal else "mlm"
    if requested == "ntp" and not causal:
        option = {"causal": "arch.causal=true", "bidirectional": "arch.bidirectional=false"}
        fix = next((option[k] for k in option if arch is not None and k in arch), "a causal backbone")
        raise ConfigError("pretrain.objective=ntp needs a causal backbone (a bidirectional one sees the "
                          f"token it must predict): set {fix}, or pretrain.objective=mlm")
    if requested == "mlm" and causal:
        raise ConfigError("pretrain.objective=mlm with a causal backbone: position t cannot see the context "
                          "after it; use objective=ntp (or auto), or a bidirectional backbone")
    return requested


def pixel_loss_for(requested, spec) -> str | None:
    """-> "ce" | "l1" for pixel tasks (null = the task's default), None for token tasks."""
    if spec.kind != "pixels":
        if requested is not None:
            raise ConfigError(f"pretrain.pixel_loss={requested!r} applies to pixel tasks only; task "
                              f"'{spec.name}' has {spec.kind} inputs: leave it null")
        return None
    return spec.spt_pixel_loss if requested is None else requested


def losses(objective: str, ratio: float, mask_id: int, pixel_loss: str | None = None, levels: int = 0):
    """-> (train loss_fn, validation loss_fn). Validation masks are fixed by the batch's content, so
    every evaluation scores the same masked positions."""
    def score(logits, targets):
        if pixel_loss == "l1":
            return pixel_l1_loss(logits, targets, levels)
        return token_loss(logits, targets)

    if objective == "ntp":
        def ntp(model, ids, mask, labels):
            return score(model(ids, mask), next_token_targets(ids, mask))
        return ntp, ntp

    def mlm(model, ids, mask, labels, generator=None):
        inputs, targets = mask_tokens(ids, mask, ratio, mask_id, generator)
        return score(model(inputs, mask), targets)

    def mlm_fixed(model, ids, mask, labels):
        seed = int(ids.sum().item()) * 1_000_003 + ids.numel()
        return mlm(model, ids, mask, labels, torch.Generator().manual_seed(seed))

    return mlm, mlm_fixed


def pretrain(ctx, announce: bool = True):
    """Stage 1, or its cached result: -> (the pretrained body, fit's summary, the pretraining's record
    for result.json, the probes Recorder holding its init and pretrained probes)."""
    cfg, task, spec = ctx.cfg, ctx.task, ctx.task.spec
    hp = cfg.pretrain
    ratio = spec.spt_mask_ratio if hp.mask_ratio is None else float(hp.mask_ratio)
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask ratio {ratio} must be in (0, 1): set pretrain.mask_ratio (or task.mask_ratio)")
    seed = int(hp.seed)
    torch.manual_seed(seed)
    body = build_body(cfg, task)
    if announce:
        ctx.announce(body)
    causal = is_causal(body.backbone)
    objective = objective_for(hp.objective, causal, cfg.arch)
    pixel_loss = pixel_loss_for(hp.get("pixel_loss"), spec)
    inputs, pretrain_on = pretrain_split(ctx)
    fraction = cfg.task.get("train_fraction", 1.0)
    # Output width of the prediction head: the vocabulary, the grey levels, or one value.
    n_out = {None: spec.vocab_size, "ce": spec.pixel_levels, "l1": 1}[pixel_loss]

    # The data itself (its digest covers source files and generator parameters), not the task
    # config; and no setting that cannot change the pretrained weights (checkpoint cadence).
    # patience and min_steps join the key only when set, so pretrainings cached before it existed keep their keys.
    settings = {k: v for k, v in OmegaConf.to_container(hp, resolve=True).items()
                if k != "ckpt_every" and not (k in NEW_WHEN_SET and v is None)}
    # The label subset is part of the data pretraining sees (its fraction and seed fix its examples).
    subset = {"train_fraction": fraction, "data_seed": cfg.task.get("data_seed", 0)} if inputs == "labelled" else {}
    depends_on = {"format": checkpoint.FORMAT, "data": {**task.data_key(), **subset}, "vocab_size": spec.vocab_size,
                  "arch": OmegaConf.to_container(cfg.arch, resolve=True),
                  "pretrain": {**settings, "objective": objective, "mask_ratio": ratio, "seed": seed,
                               "pixel_loss": pixel_loss}}
    key = digest(depends_on)
    out = ctx.cache_dir / "pretrain" / key
    out.mkdir(parents=True, exist_ok=True)
    train_loss, val_loss = losses(objective, ratio, spec.mask_id, pixel_loss, spec.pixel_levels)
    stage = Stage("pretrain", TokenPredictor(body, cfg.arch.d_model, n_out), train_loss, val_loss, "loss")
    # One run pretrains; a concurrent run with the same key waits, then reuses the result. Under
    # torchrun, rank 0 holds the lock for its whole process group (main_holds says why).
    with distributed.main_holds(str(out) + ".lock"):
        # Whether this run found the pretraining already done, fixed at its first attempt, so that a
        # run resumed after its own pretraining still reports reused=false.
        marker = ctx.run_dir / "pretrain_source.json"
        source = checkpoint.read_intact(marker) or {}
        if source.get("key") != key:
            source = {"key": key, "reused": (out / "done.json").exists()}
            if distributed.is_main():
                checkpoint.write_json(marker, source)
        reused = source["reused"]
        if (out / "done.json").exists():
            log.info("pretrain: reusing cached checkpoint %s (key %s)", out, key)
        elif distributed.is_main():
            checkpoint.write_json(out / "depends_on.json", depends_on)
            log.info("pretrain: training %s objective into %s (key %s)", objective, out, key)
        # The init and pretrained probes belong to the pretraining: stored with it, reused with it.
        probes = Recorder(ctx)
        probed = probes.cached(out / "probes.json")
        if not probed:
            probes.take("init", body)  # fit has not loaded any checkpoint yet: the seeded init
        # documents(): the examples themselves, or each document of a dual-input task on its own.
        summary = fit(stage, pretrain_on.documents(), ctx.splits["val"].documents(), hp, out, seed=seed,
                      identity={"pretrain": key}, pad_id=spec.pad_id, device=ctx.device,
                      log_path=out / "metrics.jsonl", progress=ctx.progress, compute=ctx.compute, on_log=track.rows)
        if not probed:
            probes.take("pretrained", body)
            probes.store(out / "probes.json", ("init", "pretrained"))
    record = {"key": key, "dir": str(out), "reused": reused, "objective": objective, "mask_ratio": ratio,
              "seed": seed, "pixel_loss": pixel_loss, "inputs": inputs, "n_documents": len(pretrain_on.documents())}
    return body, summary, record, probes


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
                  no_stop_before=no_stop_before, on_log=track.rows)
    test = evaluate(model, classify_loss, ctx.splits["test"], hp.eval_batch_size, spec.pad_id, ctx.device,
                    ctx.compute)
    return combine(stage_part("finetune", summary), {
        "metrics": {"val_acc": summary["best_val"]["acc"], "val_loss": summary["best_val"]["loss"],
                    "test_acc": test["acc"], "test_loss": test["loss"], "best_step": summary["best_step"]},
        "params": {"total": n_params(model), "backbone": n_params(body.backbone)},
        # Which implementation ran (e.g. Mamba's fused CUDA kernels or the PyTorch path).
        "impl": str(getattr(body.backbone, "impl", "torch")),
    })


def pretrain_part(summary: dict, record: dict) -> dict:
    """What a pretraining adds to a result: its stage sections, its metrics, and its record."""
    history = summary["history"]
    return combine(stage_part("pretrain", summary), {"pretrain": record, "metrics": {
        "pretrain_val_loss": summary["best_val"]["loss"], "pretrain_val_acc": summary["best_val"]["acc"],
        "pretrain_first_train_loss": history[0]["train_loss"], "pretrain_last_train_loss": history[-1]["train_loss"],
        "pretrain_best_step": summary["best_step"]}})


