"""Diagnostic tasks: labels follow their definitions (checked independently), classes are balanced
and carry no token-count cue, and both run end to end."""

from __future__ import annotations

import numpy as np
import pytest

from recipes import experiment
from tasks.diagnostics import CLOSE, MARKER, OPEN, LongMatch, Proximity
from tests.conftest import make_cfg


def rows(split):
    return [split.tokens[split.offsets[i] : split.offsets[i + 1]].astype(int) for i in range(len(split))]


def test_proximity_labels_follow_marker_distance(tmp_path):
    task = Proximity(length=40, near=3, far=10, n_train=200, n_val=20, n_test=20)
    split = task.splits(tmp_path)["train"]
    for seq, label in zip(rows(split), split.labels):
        where = np.flatnonzero(seq == MARKER)
        assert len(where) == 2 and len(seq) == 40
        assert label == int(where[1] - where[0] <= 3) and where[1] - where[0] <= 10
    assert split.labels.mean() == 0.5


def test_longmatch_labels_follow_span_equality(tmp_path):
    task = LongMatch(length=48, span=4, n_train=200, n_val=20, n_test=20)
    split = task.splits(tmp_path)["train"]
    for seq, label in zip(rows(split), split.labels):
        opens, closes = np.flatnonzero(seq == OPEN), np.flatnonzero(seq == CLOSE)
        assert len(opens) == len(closes) == 2 and opens[1] - opens[0] >= 48 // 2
        a, b = seq[opens[0] + 1 : closes[0]], seq[opens[1] + 1 : closes[1]]
        assert len(a) == len(b) == 4
        assert label == int(np.array_equal(a, b))
    assert split.labels.mean() == 0.5


def test_splits_are_seeded_and_distinct(tmp_path):
    a = Proximity(n_train=20, n_val=5, n_test=5).splits(tmp_path)
    b = Proximity(n_train=20, n_val=5, n_test=5, data_seed=1).splits(tmp_path)
    assert not np.array_equal(a["train"].tokens, b["train"].tokens)
    assert not np.array_equal(a["train"].tokens[:128], a["val"].tokens[:128])
    with pytest.raises(ValueError, match="near"):
        Proximity(near=5, far=5)


@pytest.mark.parametrize("task", ["proximity", "longmatch"])
def test_runs_end_to_end(tmp_path, task):
    args = [f"task={task}", "recipe=spt", "task.length=32", "task.n_train=32", "task.n_val=8", "task.n_test=8",
            "arch.d_model=16", "arch.n_layers=1", "arch.n_heads=2", "progress=false", "finetune.max_steps=3",
            "pretrain.max_steps=3", "finetune.batch_size=8", "pretrain.batch_size=8"]
    result = experiment.run(make_cfg(args, tmp_path), tmp_path / "run")
    assert result["status"] == "ok" and result["task"] == task
