"""recipes/engine/loop.py's fit in pieces: what a stage leaves behind when it ends early."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from recipes.engine import checkpoint, guard
from recipes.engine.loop import Running, Stage, TrainState, fit
from recipes.errors import TrainingDiverged
from tasks.base import TokenSplit


class Mean(nn.Module):
    """A classifier over the mean token embedding: the smallest model fit can train."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(5, 4), nn.Linear(4, 2)

    def forward(self, ids, mask):
        return self.head((self.embed(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))


def split(n: int) -> TokenSplit:
    rng = np.random.default_rng(0)
    return TokenSplit(tokens=rng.integers(1, 5, 3 * n), offsets=np.arange(0, 3 * n + 1, 3),
                      labels=rng.integers(0, 2, n))


def diverging(model, ids, mask, labels):
    logits = model(ids, mask)
    loss = nn.functional.cross_entropy(logits, labels) * float("nan")
    return loss, (logits.argmax(-1) == labels).sum(), torch.tensor(labels.numel())


def test_a_diverged_stage_leaves_sigterm_acting_at_once_again(tmp_path):
    hp = OmegaConf.create({"batch_size": 4, "eval_batch_size": 8, "epochs": 1, "max_steps": 3, "lr": 0.01,
                           "weight_decay": 0.0, "betas": [0.9, 0.98], "grad_clip": 1.0, "warmup_steps": 0,
                           "min_lr_ratio": 0.1, "on_nan": "stop"})
    stage = Stage("finetune", Mean(), diverging, diverging, "acc")
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        fit(stage, split(8), split(4), hp, tmp_path, seed=0, identity={"t": 1}, pad_id=0,
            device=torch.device("cpu"), log_path=tmp_path / "metrics.jsonl", progress=False)
    assert guard._state["in_loop"] is False  # the cleanup ran in fit's finally


def test_a_train_state_restores_what_it_saved_and_reads_four_running_sums(tmp_path):
    model = Mean()
    optim = torch.optim.AdamW(model.parameters())
    state = TrainState(model, optim, torch.amp.GradScaler("cpu", enabled=False), step=3, elapsed=1.5,
                       history=[{"step": 2}], best={"acc": 0.5}, best_step=2, running=Running(1.0, 2.0, 3.0, 1, 9, 3),
                       skipped=[1])
    state.save(tmp_path / "last.pt", {"t": 1}, torch.device("cpu"))
    saved = checkpoint.load(tmp_path / "last.pt", {"t": 1})
    other = Mean()
    back = TrainState(other, torch.optim.AdamW(other.parameters()), torch.amp.GradScaler("cpu", enabled=False))
    back.restore(saved, tmp_path / "last.pt", 0, torch.device("cpu"))
    assert (back.step, back.elapsed, back.history, back.best, back.best_step, back.running, back.skipped) == \
        (3, 1.5, [{"step": 2}], {"acc": 0.5}, 2, Running(1.0, 2.0, 3.0, 1, 9, 3), [1])
    assert all(torch.equal(a, b) for a, b in zip(back.model.state_dict().values(), model.state_dict().values()))
    # A FORMAT 2 checkpoint from before padding was counted (still accepted by checkpoint.load): 4 sums.
    back.restore({**saved, "running": [1.0, 2.0, 3.0, 1]}, tmp_path / "last.pt", 0, torch.device("cpu"))
    assert back.running == Running(1.0, 2.0, 3.0, 1, 0, 0)
