"""The one training loop every recipe and stage shares.

AdamW with parameter groups (no weight decay on norms and biases, i.e. tensors with < 2 dims; a
parameter may carry `_optim = {"lr": ..., "weight_decay": ...}` to override, as SSM parameters do),
linear warmup then cosine decay, gradient clipping, validation every `eval_every` steps, the best
validation score kept, a resumable checkpoint, and a metrics log. A non-finite loss or gradient
and SIGTERM are handled as recipes/engine/guard.py describes.

Determinism and resume: batch order for epoch e is a permutation seeded by (seed, e), and the
torch RNG state (dropout, masking) is saved with each checkpoint, so a run resumed from step s
continues exactly as the uninterrupted one would have (bitwise on CPU).

Data parallelism (torchrun, recipes/engine/distributed.py): `batch_size` is the global batch. Every rank
walks the same global order and trains on its share of each batch, in micro-batches when
`compute.micro_batch_size` is set; gradients are weighted so that a step equals one process's step
on the whole batch (see `accumulate`), metrics are summed over ranks, and rank 0 alone writes files.

Early stopping: with `patience` = P, a stage stops after P validations in a row without improving its
best score (`Stage.score`), never before step `min_steps` (or the caller's `no_stop_before`); otherwise
it runs to its cap (`max_steps`, or `epochs`). The decision is a function of the logged validations alone, so a stage
killed after its patience ran out resumes to the same stop. The summary says where it stopped and why.

Files in `out_dir`: last.pt (full state, for resume), best.pt (weights of the best validation
score), done.json (summary, written when the stage completes), and the metrics log `log_path`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from recipes.engine import checkpoint, distributed, guard
from recipes.engine.compute import PLAIN, Compute, batches
from recipes.errors import CheckpointError, TrainingDiverged
from tasks.base import TokenSplit

log = logging.getLogger(__name__)

# Stage settings added after runs were made: left out of config hashes and pretraining keys while null, so
# those runs and caches keep theirs (recipes/experiment.py, recipes/spt.py).
NEW_WHEN_SET = ("patience", "min_steps")

# loss_fn(model, ids, mask, labels) -> (loss, n correct, n counted); all on the model's device.
LossFn = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


@dataclass
class Stage:
    """One training stage: what to optimize and how to judge it on validation."""

    name: str  # "pretrain" | "finetune": names progress bars and metrics rows
    model: nn.Module
    loss_fn: LossFn
    eval_loss_fn: LossFn  # deterministic variant used on validation (e.g. fixed masks)
    score: str  # "acc" (higher is better) or "loss" (lower is better) picks the best checkpoint


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    groups: dict[tuple, list] = {}
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.requires_grad:
            continue
        opt = {"lr": lr, "weight_decay": weight_decay if p.ndim >= 2 else 0.0, **getattr(p, "_optim", {})}
        groups.setdefault((opt["lr"], opt["weight_decay"]), []).append(p)
    return [{"params": ps, "lr": lr_, "base_lr": lr_, "weight_decay": wd} for (lr_, wd), ps in groups.items()]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the base lr at (0-based) step: linear warmup, then cosine down to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, seed: int, epoch: int, batch_size: int = 1, lengths: np.ndarray | None = None,
                pool: int = 0) -> np.ndarray:
    """The example order of one epoch; consecutive `batch_size` slices are its batches.

    pool = 0: a permutation seeded by (seed, epoch). pool = K > 0 (length bucketing): that
    permutation cut into pools of K batches, each pool sorted by length (stable), cut into batches,
    and the whole batches shuffled (seeded too; the last, partial batch stays last), so a batch holds
    examples of similar length and pads less, while which examples meet is still random. A function of
    (seed, epoch) alone: a resumed run and every DDP rank compute the same order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    if not pool or lengths is None:
        return order
    span = pool * batch_size
    order = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                            for chunk in np.split(order, range(span, n, span))])
    full = n // batch_size
    batches = order[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([batches.reshape(-1), order[full * batch_size:]])


def total_steps(hp: DictConfig, n_examples: int) -> int:
    """Optimizer steps of a stage on `n_examples`: `max_steps` when set, else whole epochs."""
    return int(hp.max_steps) if hp.get("max_steps") else int(hp.epochs) * math.ceil(n_examples / hp.batch_size)


def validations_since_best(history: list[dict], best_step: int) -> int:
    """Validations logged after the best one: how long the stage has gone without improving."""
    return sum(1 for row in history if row["step"] > best_step)


def stopping(hp: DictConfig, history: list[dict], best_step: int, step: int, total: int, eval_every: int,
             steps_per_epoch: int) -> dict:
    """Where and why a stage stopped (result.json `stopping`). `converged` is false when the stage hit its
    cap while still improving: its best validation within the last `patience` validations (patience null:
    the last validation was the best), so more steps could have helped."""
    patience = hp.get("patience")
    since = validations_since_best(history, best_step)
    return {"cap": total, "steps": step, "best_step": best_step, "reason": "patience" if step < total else "cap",
            "patience": patience, "eval_every": eval_every, "steps_per_epoch": steps_per_epoch,
            "epochs": round(step / steps_per_epoch, 3),
            "converged": since >= patience if patience else best_step < step}


def pad_share(lengths: np.ndarray, batches: list[np.ndarray]) -> tuple[int, int]:
    """-> (real tokens, padded slots) of these batches, each padded to its longest example."""
    real = sum(int(lengths[b].sum()) for b in batches)
    return real, sum(int(lengths[b].max()) * len(b) for b in batches if len(b)) - real


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, split: TokenSplit, batch_size: int, pad_id: int,
             device: torch.device, compute: Compute = PLAIN) -> dict:
    """Mean loss (weighted by counted items) and accuracy over a whole split. Under DDP each rank
    evaluates every world()-th batch and the sums are added up: each example counts exactly once."""
    was_training = model.training
    model.eval()
    order = np.argsort(split.lengths(), kind="stable")  # similar lengths together: less padding
    mine = distributed.share([order[i : i + batch_size] for i in range(0, len(order), batch_size)])
    total_loss = correct = count = 0.0
    for ids, mask, labels in batches(split, mine, pad_id, compute, device):
        with compute.autocast(device):
            loss, c, n = loss_fn(model, ids, mask, labels)
        total_loss += loss.item() * n.item()
        correct += c.item()
        count += n.item()
    total_loss, correct, count = distributed.sum_all([total_loss, correct, count])
    model.train(was_training)
    return {"loss": total_loss / max(count, 1), "acc": correct / max(count, 1)}


def micro_batches(index: np.ndarray, size: int | None) -> tuple[list[np.ndarray], bool]:
    """This rank's share of the global batch `index`, cut into pieces of at most `size` examples
    (gradient accumulation). -> (pieces, empty): a share left empty by a last batch smaller than the
    world still runs one example, with weight 0, so that the rank joins the gradient all-reduce."""
    mine = distributed.share(index)
    empty = len(mine) == 0
    if empty:
        mine = index[:1]
    size = size or len(mine)
    return [mine[i : i + size] for i in range(0, len(mine), size)], empty


def accumulate(stage: Stage, model: nn.Module, pieces: list, empty: bool, loaded, scaler, compute: Compute,
               device: torch.device) -> tuple[float, float, float]:
    """Forward and backward of this rank's pieces of one global batch. -> (summed loss, n correct,
    n counted) of the whole global batch: summed over pieces and ranks.

    Each piece back-propagates its *summed* loss (mean × count), and DDP averages gradients over
    ranks, so gradients × world / (n counted) are exactly the gradient of the global batch's mean loss
    — one process's gradient — however the counted items (examples, or masked tokens) fall between
    ranks and pieces (fit does that rescaling)."""
    no_sync = getattr(model, "no_sync", nullcontext)  # DDP: all-reduce in the last piece's backward only
    sums = [0.0, 0.0, 0.0]
    for k in range(len(pieces)):
        ids, mask, labels = next(loaded)
        with nullcontext() if k == len(pieces) - 1 else no_sync():
            with compute.autocast(device):
                loss, correct, count = stage.loss_fn(model, ids, mask, labels)
            weight = 0.0 if empty else float(count)
            scaler.scale(loss * weight).backward()
        # A non-finite loss stays non-finite in the sum (inf * 0 is nan), so every rank sees it.
        sums = [sums[0] + loss.item() * weight, sums[1] + (0 if empty else correct.item()), sums[2] + weight]
    return tuple(distributed.sum_all(sums))


@dataclass
class Schedule:
    """A stage's numbers of steps, fixed by its settings and the size of its train split."""

    total: int  # optimizer steps: max_steps, or epochs of steps_per_epoch
    steps_per_epoch: int
    eval_every: int  # steps between validations (default: one epoch)
    warmup: int
    patience: int | None  # validations without a better score that end the stage (None: run to the cap)
    no_stop_before: int  # patience may not end the stage before this step

    @classmethod
    def of(cls, hp: DictConfig, n_train: int, no_stop_before: int) -> Schedule:
        steps_per_epoch = math.ceil(n_train / hp.batch_size)
        total = total_steps(hp, n_train)
        # min_steps: patience may not end the stage before it (a from-scratch model can sit at chance, or on a
        # plateau, for longer than `patience` validations before it starts to learn).
        return cls(total, steps_per_epoch, int(hp.eval_every) if hp.get("eval_every") else steps_per_epoch,
                   min(int(hp.warmup_steps), total), hp.get("patience"),
                   max(no_stop_before, int(hp.get("min_steps") or 0)))


@dataclass
class Running:
    """Sums over the steps since the last validation, for its train_loss, train_acc and pad_share."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    steps: int = 0
    real: int = 0  # real tokens and padded slots of those steps' batches
    padded: int = 0


@dataclass
class TrainState:
    """What a stage's last.pt holds, and all of the stage that changes as it trains; with the torch RNG
    of every rank, saved alongside, a stage resumed from it continues exactly as it would have."""

    model: nn.Module
    optim: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0  # optimizer steps taken
    elapsed: float = 0.0  # training seconds up to the last save, over all attempts
    history: list[dict] = field(default_factory=list)  # one metrics row per validation
    best: dict | None = None  # the best validation's metrics, and its step
    best_step: int = -1
    running: Running = field(default_factory=Running)
    skipped: list[int] = field(default_factory=list)  # steps whose batch on_nan=skip_batch dropped

    def save(self, path: Path, identity: dict, device: torch.device) -> None:
        """last.pt; collective under torchrun (every rank's RNG is gathered), rank 0 writes."""
        # Every rank's random state (dropout, masking), so that a resumed DDP run continues each stream.
        rngs = distributed.gather([torch.get_rng_state(), [torch.cuda.get_rng_state(device)] if device.type == "cuda"
                                   else []])
        if not distributed.is_main():
            return
        r = self.running
        checkpoint.save(path, {
            "identity": identity, "model": self.model.state_dict(), "optim": self.optim.state_dict(),
            "rng": rngs[0][0], "cuda_rng": rngs[0][1], "rank_rng": rngs[1:], "scaler": self.scaler.state_dict(),
            "step": self.step, "elapsed": self.elapsed, "history": self.history, "best": self.best,
            "best_step": self.best_step, "running": [r.loss, r.correct, r.count, r.steps, r.real, r.padded],
            "skipped": self.skipped,
        })

    def restore(self, saved: dict, path: Path, seed: int, device: torch.device) -> None:
        """Continue from a last.pt that checkpoint.load accepted. Files of FORMAT 2 written before
        data parallelism (no rank_rng, no scaler) and before padding was counted (four running sums)
        are still accepted, so they still resume."""
        checkpoint.load_weights(self.model, saved["model"], path)
        self.optim.load_state_dict(saved["optim"])
        rngs = [[saved["rng"], saved["cuda_rng"]], *saved.get("rank_rng", [])]
        if distributed.rank() < len(rngs):
            cpu_rng, cuda_rng = rngs[distributed.rank()]
            torch.set_rng_state(cpu_rng)
            if device.type == "cuda" and cuda_rng:
                torch.cuda.set_rng_state(cuda_rng[0], device)
        else:  # more ranks than when the checkpoint was written: new streams for the new ones
            torch.manual_seed(distributed.rank_seed(seed) + saved["step"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.step, self.elapsed, self.history = saved["step"], saved["elapsed"], saved["history"]
        self.best, self.best_step, self.skipped = saved["best"], saved["best_step"], saved["skipped"]
        self.running = Running(*saved["running"])

    def patience_ran_out(self, sched: Schedule) -> bool:
        """Decided at a validation only (the last logged row is this step's)."""
        return (bool(sched.patience) and self.step >= sched.no_stop_before and bool(self.history)
                and self.history[-1]["step"] == self.step
                and validations_since_best(self.history, self.best_step) >= sched.patience)


def train_step(stage: Stage, state: TrainState, train_model: nn.Module, pieces: list, empty: bool, loaded,
               hp: DictConfig, sched: Schedule, compute: Compute, device: torch.device, last_path: Path) -> None:
    """One optimizer step on one global batch, of which this rank holds `pieces` (micro_batches), read from
    `loaded`. A non-finite loss or gradient stops the stage (TrainingDiverged) or, with on_nan=skip_batch,
    changes nothing but `skipped` (not even the logged train loss)."""
    model, optim, scaler = state.model, state.optim, state.scaler
    factor = lr_factor(state.step, sched.total, sched.warmup, hp.min_lr_ratio)
    for group in optim.param_groups:
        group["lr"] = group["base_lr"] * factor
    optim.zero_grad(set_to_none=True)
    loss_sum, correct, count = accumulate(stage, train_model, pieces, empty, loaded, scaler, compute, device)
    loss = loss_sum / max(count, 1)  # the global batch's mean loss, the same on every rank
    scaler.unscale_(optim)
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(distributed.world() / max(count, 1))
    # After DDP's all-reduce the norm, like the loss, is the same on every rank: all ranks take the
    # same decision below. max_norm=inf measures without clipping.
    norm = nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip or math.inf)
    fault = "loss" if not math.isfinite(loss) else None
    # In fp16 an overflowing gradient is the GradScaler's business: it skips the step, lowers the scale.
    if fault is None and not torch.isfinite(norm) and compute.precision != "fp16":
        fault = "gradient"
    step = state.step
    if fault and hp.get("on_nan", "stop") == "stop":
        good = f"last good checkpoint {last_path}" if last_path.exists() else "no checkpoint saved yet"
        raise TrainingDiverged(f"{stage.name}: non-finite {fault} ({loss}) at step {step}; {good}",
                               stage=stage.name, step=step, what=fault,
                               checkpoint=str(last_path) if last_path.exists() else None)
    if fault:  # on_nan=skip_batch: this batch changes nothing, not even the logged train loss
        log.warning("%s: non-finite %s at step %d: batch skipped (on_nan=skip_batch)", stage.name, fault, step)
        state.skipped.append(step)
        optim.zero_grad(set_to_none=True)
        scaler.update()
    else:
        scaler.step(optim)
        scaler.update()
        r = state.running
        r.loss, r.correct, r.count, r.steps = r.loss + loss, r.correct + correct, r.count + count, r.steps + 1




def validate(stage: Stage, state: TrainState, val: TokenSplit, hp: DictConfig, sched: Schedule, pad_id: int,
             device: torch.device, compute: Compute, started: float, best_path: Path, identity: dict) -> dict:
    """One validation, after step state.step: its metrics row onto the history (the running sums start
    over), and the weights to best.pt when they score best so far. -> the row."""
    metrics = evaluate(state.model, stage.eval_loss_fn, val, hp.eval_batch_size, pad_id, device, compute)
    state.elapsed = time.perf_counter() - started
    r, step = state.running, state.step
    row = {"stage": stage.name, "step": step, "epoch": round(step / sched.steps_per_epoch, 4),
           "lr": hp.lr * lr_factor(step - 1, sched.total, sched.warmup, hp.min_lr_ratio),  # the last step's
           "train_loss": r.loss / r.steps if r.steps else None, "train_acc": r.correct / max(r.count, 1),
           "val_loss": metrics["loss"], "val_acc": metrics["acc"], "elapsed_s": round(state.elapsed, 3),
           # share of the padded batch that was padding, over the steps since the last row
           "pad_share": round(r.padded / max(r.real + r.padded, 1), 4)}
    state.history.append(row)
    state.running = Running()
    log.info("%s step %d/%d: train_loss %.4f val_loss %.4f val_acc %.4f", stage.name, step, sched.total,
             row["train_loss"], metrics["loss"], metrics["acc"])
    score, best = metrics[stage.score], state.best
    if best is None or (score > best[stage.score] if stage.score == "acc" else score < best[stage.score]):
        state.best, state.best_step = metrics, step
        if distributed.is_main():
            checkpoint.save(best_path, {"identity": identity, "model": state.model.state_dict()})
    return row


def finished(stage: Stage, out_dir: Path, identity: dict) -> dict | None:
    """The summary of a stage already complete in out_dir (its best weights loaded), or None. Damaged
    files of the stage are moved aside first, so that it is redone from scratch."""
    done_path, last_path, best_path = out_dir / "done.json", out_dir / "last.pt", out_dir / "best.pt"
    if distributed.is_main():
        checkpoint.discard_if_damaged((done_path, last_path, best_path), identity)
    distributed.barrier()  # no rank looks at the files before rank 0 has checked them
    if not done_path.exists():
        return None
    summary = checkpoint.read_json(done_path)
    if summary.get("identity") != identity:
        raise CheckpointError(
            f"{done_path} belongs to a different configuration "
            f"({checkpoint.describe_diff(summary.get('identity') or {}, identity)}); delete {out_dir}")
    checkpoint.load_weights(stage.model, checkpoint.load(best_path, identity)["model"], best_path)
    log.info("%s: already complete in %s (best step %d)", stage.name, out_dir, summary["best_step"])
    return summary


def fit(stage: Stage, train: TokenSplit, val: TokenSplit, hp: DictConfig, out_dir: Path, *, seed: int,
        identity: dict, pad_id: int, device: torch.device, log_path: Path, prefix_rows: list[dict] = (),
        progress: bool = True, compute: Compute = PLAIN, no_stop_before: int = 0,
        on_log: Callable[[list[dict]], None] | None = None) -> dict:
    """Train `stage.model` in place, leave it holding the best validation weights, return a summary.
    Under torchrun every rank calls this; `hp.batch_size` is the global batch, and rank 0 alone writes.
    `no_stop_before`: patience may not end the stage before this step (recipes/supervised_matched.py)."""
    out_dir = Path(out_dir)
    main = distributed.is_main()
    model = stage.model.to(device)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    summary = finished(stage, out_dir, identity)
    if summary is not None:
        return summary

    sched = Schedule.of(hp, len(train), no_stop_before)
    lengths, pool = train.lengths(), hp.get("bucket_pool") or 0  # bucket_pool checked by recipes.config_schema
    log.info("stage %s: %d steps (%s), batch size %d, lr %g, warmup %d, validation every %d steps%s", stage.name,
             sched.total, "max_steps" if hp.get("max_steps") else f"{hp.epochs} epochs of {sched.steps_per_epoch}",
             hp.batch_size, hp.lr, sched.warmup, sched.eval_every,
             f", early stopping after {sched.patience} validations without a better {stage.score}"
             if sched.patience else "")
    state = TrainState(model, torch.optim.AdamW(param_groups(model, hp.lr, hp.weight_decay), lr=hp.lr,
                                                betas=tuple(hp.betas)),
                       torch.amp.GradScaler(device.type, enabled=compute.precision == "fp16"))
    if last_path.exists():
        state.restore(checkpoint.load(last_path, identity), last_path, seed, device)
        log.info("%s: resuming from %s at step %d of %d", stage.name, last_path, state.step, sched.total)
    else:
        torch.manual_seed(distributed.rank_seed(seed))

    started = time.perf_counter() - state.elapsed
    # This attempt's first step and time so far: the stage's estimate times only this attempt's steps.
    first_step, estimated, elapsed_before = state.step, False, state.elapsed
    model.train()
    ddp = distributed.wrap(model)  # shares model's parameters; evaluation and checkpoints use model itself
    train_model = torch.compile(ddp) if compute.compile else ddp
    bar = tqdm(total=sched.total, initial=state.step, desc=stage.name, disable=not progress or not main, leave=False,
               dynamic_ncols=True)
    order_epoch, plan, loaded = -1, {}, None
    guard.in_loop(True)
    try:
        # Resumed after its patience ran out (killed before done.json): the stage ends here, as it did then.
        while state.step < sched.total and not state.patience_ran_out(sched):
            # SIGTERM: acted on at a step boundary, where the state is consistent. Under torchrun the ranks
            # agree first (ranks may see the signal a step apart, and saving is collective).
            if distributed.sum_all([float(guard.stop_requested())])[0]:
                state.elapsed = time.perf_counter() - started
                state.save(last_path, identity, device)
                raise guard.Preempted(f"{stage.name}: saved {last_path} at step {state.step} of {sched.total}")
            epoch, pos = divmod(state.step, sched.steps_per_epoch)
            if epoch != order_epoch:  # this rank's pieces of every step left in the epoch, loaded ahead
                order_epoch = epoch
                order = epoch_order(len(train), seed, epoch, hp.batch_size, lengths, pool)
                plan = {p: micro_batches(order[p * hp.batch_size : (p + 1) * hp.batch_size], compute.micro_batch_size)
                        for p in range(pos, min(sched.steps_per_epoch, pos + sched.total - state.step))}
                loaded = batches(train, [piece for pieces, _ in plan.values() for piece in pieces], pad_id, compute,
                                 device)
            real, padded = pad_share(lengths, [order[pos * hp.batch_size : (pos + 1) * hp.batch_size]])
            state.running.real, state.running.padded = state.running.real + real, state.running.padded + padded
            train_step(stage, state, train_model, *plan[pos], loaded, hp, sched, compute, device, last_path)
            state.step += 1
            bar.update()
            if state.step % sched.eval_every == 0 or state.step == sched.total:
                row = validate(stage, state, val, hp, sched, pad_id, device, compute, started, best_path, identity)
                bar.set_postfix(val_loss=f"{row['val_loss']:.3f}", val_acc=f"{row['val_acc']:.3f}")
                if not estimated and state.step < sched.total:  # once this attempt's steps and a validation were timed
                    estimated = True
                    per_step = (time.perf_counter() - started - elapsed_before) / (state.step - first_step)
                    log.info("stage %s: about %s more to the cap of %d steps (%.3g s per step, validations "
                             "included)%s", stage.name, clock(per_step * (sched.total - state.step)), sched.total,
                             per_step, "; early stopping may end it sooner" if sched.patience else "")
                state.save(last_path, identity, device)
                if main:
                    write_log(log_path, [*prefix_rows, *state.history], on_log)
                if state.patience_ran_out(sched):
                    log.info("%s: stopped at step %d: %d validations without a better %s (best at step %d)",
                             stage.name, state.step, sched.patience, stage.score, state.best_step)
                    break
            elif hp.get("ckpt_every") and state.step % hp.ckpt_every == 0:
                state.elapsed = time.perf_counter() - started
                state.save(last_path, identity, device)
    finally:  # also when the stage diverged or was interrupted: SIGTERM outside training acts at once again
        guard.in_loop(False)
        bar.close()
    if main:
        write_log(log_path, [*prefix_rows, *state.history], on_log)  # also when a kill fell between last.pt and the log
    distributed.barrier()  # rank 0 has written best.pt before any rank reads it
    checkpoint.load_weights(model, checkpoint.load(best_path, identity)["model"], best_path)
    summary = {"identity": identity, "steps": state.step, "best_step": state.best_step, "best_val": state.best,
               "stopping": stopping(hp, state.history, state.best_step, state.step, sched.total, sched.eval_every,
                                    sched.steps_per_epoch),
               "wall_time_s": round(time.perf_counter() - started, 3), "history": state.history,
               "skipped_steps": state.skipped}
    if main:
        checkpoint.write_json(out_dir / "done.json", summary)
    return summary


def clock(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 3 min 20 s, 2 h 05 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def write_log(path: Path, rows: list[dict], on_log: Callable[[list[dict]], None] | None = None) -> None:
    """The whole metrics log, rewritten atomically: after a resume it never holds duplicate rows."""
    checkpoint.atomic_write(Path(path), lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))
    if on_log is not None:  # e.g. a tracker (recipes.extras.track.rows): the rows it has not seen yet
        on_log(rows)
