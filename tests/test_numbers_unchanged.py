"""Refactoring never changes a number: fixed-seed tiny runs (every recipe, three backbones, one run
interrupted and resumed) give exactly the result.json numbers recorded in tests/fixtures/numbers.json.

The record was written by the code before the recipes/ layout moved (issue 22), with
`python -m tests.test_numbers_unchanged --write`; rewrite it only for a change that is meant to move
numbers (a new checkpoint format, a fixed bug), and say so in the commit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

RECORD = Path(__file__).parent / "fixtures" / "numbers.json"
SIZES = ["task.n_train=96", "task.n_val=32", "task.n_test=32", "task.min_length=4", "task.max_length=24",
         "arch.d_model=16", "arch.n_layers=1", "progress=false", "probes.n_examples=4",
         "finetune.max_steps=8", "finetune.eval_every=4", "finetune.warmup_steps=2", "finetune.lr=0.003",
         "pretrain.max_steps=8", "pretrain.eval_every=4", "pretrain.warmup_steps=2", "pretrain.lr=0.003"]
RUNS = {
    "transformer-supervised": ["arch=transformer", "recipe=supervised", "arch.n_heads=2"],
    "s4d-spt": ["arch=s4d", "recipe=spt", "seed=1"],
    "cnn-supervised_matched": ["arch=cnn", "recipe=supervised_matched", "finetune.patience=1"],
    "cnn-spt-digits": ["arch=cnn", "recipe=spt", "task=digits", "task.n_train=120", "task.n_val=40",
                       "task.n_test=40", "~task.min_length", "~task.max_length"],
}
RESUMED = "transformer-spt-resumed"  # interrupted in fine-tuning, then the same command again
# What a refactor must keep: everything a report reads, except wall-clock times and where files are.
KEPT = ("metrics", "steps", "stopping", "params", "config_hash", "group_hash", "baselines", "probes")


def numbers(result: dict) -> dict:
    out = {k: result.get(k) for k in KEPT}
    if out["probes"]:
        out["probes"] = {k: v for k, v in out["probes"].items() if k != "wall_time_s"}
    return json.loads(json.dumps(out))


def collect(tmp: Path) -> dict:
    """The runs' numbers, on one thread: a CPU kernel's float sums depend on how many threads split them
    (the record was written with OMP_NUM_THREADS=1; CI and pytest-xdist workers use more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return runs(tmp)
    finally:
        torch.set_num_threads(threads)


def runs(tmp: Path) -> dict:
    import recipes.stages
    from recipes import experiment
    from tests.conftest import make_cfg

    def overrides(extra):
        sizes = [s for s in SIZES if not any(e == f"~{s.split('=')[0]}" or e.split("=")[0] == s.split("=")[0]
                                              for e in extra)]
        return [*sizes, *(e for e in extra if not e.startswith("~"))]

    got = {name: numbers(experiment.run(make_cfg(overrides(extra), tmp), tmp / name)) for name, extra in RUNS.items()}
    cfg = make_cfg(overrides(["arch=transformer", "recipe=spt", "arch.n_heads=2", "finetune.ckpt_every=1"]), tmp)
    real, calls = recipes.stages.classify_loss, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args)

    recipes.stages.classify_loss = interrupted
    try:
        experiment.run(cfg, tmp / RESUMED)
    except KeyboardInterrupt:
        pass
    finally:
        recipes.stages.classify_loss = real
    got[RESUMED] = numbers(experiment.run(cfg, tmp / RESUMED))
    return got


@pytest.mark.slow
def test_fixed_seed_runs_give_the_recorded_numbers(tmp_path):
    recorded = json.loads(RECORD.read_text())
    got = collect(tmp_path)
    assert sorted(got) == sorted(recorded)
    for name in recorded:
        assert got[name] == recorded[name], name


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        RECORD.write_text(json.dumps(collect(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
elif __name__ == "__main__":
    pytest.main([__file__, "-q"])
