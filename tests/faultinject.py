"""Run a command with one deterministic fault: `SPTBENCH_FAULT=<point>:<n>:<KILL|TERM|INT> python -m
tests.faultinject run.py ARGS` (or `-m reports ARGS`). The process sends itself SIGKILL, SIGTERM or
SIGINT (Ctrl-C) at the n-th time it reaches <point>; with NAN instead, that loss is NaN:

- `prepare`: the prepared data is saved to its temporary folder, not yet renamed into place;
- `pretrain` / `finetune`: a loss computation in that stage (training or validation);
- `write:<path end>`: a file whose path ends so (last.pt, checkpoints/best.pt, result.json, ...)
  is written to its temporary name, just before the rename; with KILL the temporary file is first
  cut to half its size, as a kill in the middle of the write would leave it.

The hooks live here, wrapped around the code under test, so the product carries no test switches.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

import datasets

import recipes.stages

point, n, how = os.environ["SPTBENCH_FAULT"].rsplit(":", 2)
SIGNAL = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT, "NAN": None}[how]
if how == "INT":
    # Ctrl-C as in a terminal: a process started with SIGINT ignored (by a pytest-xdist worker, which
    # leaves Ctrl-C to its controller, or by nohup) inherits that, and Python then never raises
    # KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
seen = 0


def reached() -> bool:
    global seen
    seen += 1
    return seen == int(n)


def fault() -> None:
    print(f"faultinject: {how} at {point} #{n}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), SIGNAL)  # SIGTERM: the handler runs on return, as it would for a real one


def wrap(fn, name):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if point == name and reached():
            if how == "NAN":  # a loss function returns (loss, *counts)
                return (out[0] * float("nan"), *out[1:])
            fault()
        return out
    return wrapped


datasets.DatasetDict.save_to_disk = wrap(datasets.DatasetDict.save_to_disk, "prepare")
recipes.stages.token_loss = wrap(recipes.stages.token_loss, "pretrain")
recipes.stages.classify_loss = wrap(recipes.stages.classify_loss, "finetune")
real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if point.startswith("write:") and f"/{dst}".endswith(f"/{point[6:]}") and reached():
        if how == "KILL":  # a kill can land mid-write; SIGTERM's handler never leaves a torn file
            os.truncate(src, os.path.getsize(src) // 2)
        fault()
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace

if __name__ == "__main__":
    if sys.argv[1] == "-m":
        sys.argv = [sys.argv[2], *sys.argv[3:]]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
