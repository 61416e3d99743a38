"""What a grid costs before it runs: `python -m bench.plan <run.py overrides>` or `python run.py -m ... --dry-run`.

    python -m bench.plan experiment=lra_listops arch=transformer,s4,s4d,mamba,cnn recipe=supervised,spt seed=0,1,2 \
        --throughput runs/bench/throughput-cuda.json

Lists every run of the grid (comma lists on the command line, and a preset's hydra.sweeper.params)
with its parameter count, optimizer steps per stage and an estimated time in hours on the device that
was measured (GPU hours from a GPU's --throughput file; CPU or GPU hours with --measure), then the total.
Each configuration is composed, checked and its model built as a run would (recipes.experiment),
without preparing any data, so a grid that would fail says so here first.

Time per step = tokens per step (batch x the task's longest input, twice for two-document tasks:
padded batches are close to it at LRA lengths) / training tokens per second, from either
- `--throughput FILE`: a `python -m bench.throughput --paper` result (JSON) measured on the GPU you will
  use; tokens/s at the run's length is interpolated log-log between measured lengths, then scaled by
  the measured model's backbone size over the run's (per-token work grows with the weights), or
- `--measure`: a few timed training steps of each distinct backbone at its own batch and length on
  the run's own device (its `device` setting: a GPU where one answers, else the CPU; --device overrides
  it), with bench.throughput's measurement: slower to plan but no scaling.
Overrides and flags may come in any order.
Validation passes, data preparation and checkpoints are not counted: read the figure as a lower bound.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Train-split sizes of the LRA release where a preset takes all of it (task.n_train=null):
# Tay et al. 2020 (LRA) and the splits this suite's loaders make (Text: IMDB's 25k train reviews;
# Retrieval: AAN's 147,086 train pairs; Image: CIFAR-10's 50k train images less 5k for validation).
RELEASE_TRAIN = {"text": 25_000, "retrieval": 147_086, "image": 45_000}


def expand(overrides: list[str], preset_params: dict) -> list[list[str]]:
    """Hydra's basic sweep: the preset's sweeper params, overridden by the command line's, as the
    cartesian product of their comma-separated values -> one override list per run."""
    sweep, fixed = dict(preset_params), []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and "," in value and not value.startswith(("[", "{")):
            sweep[key] = value
        elif sep and key in sweep:
            sweep[key] = value  # a single value on the command line replaces the preset's list
        else:
            fixed.append(item)
    keys = list(sweep)
    choices = [str(sweep[k]).split(",") for k in keys]
    return [fixed + [f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*choices)]


def compose(overrides: list[str], hydra_cfg: bool = False):
    """conf/ composed with `overrides`, as run.py would; a Hydra error as one ConfigError line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from recipes.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"{' '.join(overrides)}: {str(exc).splitlines()[0]}") from exc


def train_examples(cfg) -> int:
    """Examples in the (labelled subset of the) train split, without preparing it."""
    n = cfg.task.get("n_train")
    if n is None:
        if cfg.task.name not in RELEASE_TRAIN:
            from recipes.errors import ConfigError

            raise ConfigError(f"task.n_train=null for task '{cfg.task.name}': its size is unknown before the "
                              "data is prepared; set task.n_train to plan it")
        n = RELEASE_TRAIN[cfg.task.name]
    return max(1, round(n * float(cfg.task.get("train_fraction", 1.0))))


def stage_steps(cfg, stages: tuple[str, ...], n_train: int, dual: bool) -> dict[str, int]:
    """Optimizer steps per stage, as recipes/engine/loop.py counts them; the compute-matched control takes
    spt's two stages' steps at the finetune settings."""
    from recipes.engine.loop import total_steps

    docs = 2 * n_train if dual else n_train  # pretraining reads each document of a pair alone
    steps = {}
    if "pretrain" in stages or cfg.recipe.name == "supervised_matched":
        steps["pretrain"] = total_steps(cfg.pretrain, docs)
    steps["finetune"] = total_steps(cfg.finetune, n_train)
    if cfg.recipe.name == "supervised_matched":
        return {"finetune": steps["pretrain"] + steps["finetune"]}
    return steps


def bench_rate(rows: list[dict], arch: str, length: int, params: int) -> float | None:
    """Tokens/s of `arch` at `length` from bench.throughput rows, scaled to a backbone of `params`."""
    label = next((r["arch"] for r in rows if r["arch"] in (f"{arch}:cuda", arch)), None) or \
        next((r["arch"] for r in rows if r["arch"].startswith(f"{arch}:")), None)
    got = sorted((r["L"], r["tokens_per_s"], r["params"]) for r in rows if r["arch"] == label and "tokens_per_s" in r)
    if not got:
        return None
    below = [g for g in got if g[0] <= length] or got[:1]
    above = [g for g in got if g[0] >= length] or got[-1:]
    (l0, r0, p0), (l1, r1, _) = below[-1], above[0]
    rate = r0 if l0 == l1 else math.exp(math.log(r0) + (math.log(r1) - math.log(r0))
                                        * (math.log(length) - math.log(l0)) / (math.log(l1) - math.log(l0)))
    return rate * p0 / params


def measured_rate(cfg, length: int, batch: int, device: str, cache: dict) -> float | None:
    """Tokens/s of a few training steps of this backbone at (batch, length) on `device`."""
    from omegaconf import OmegaConf

    from bench.throughput import time_steps

    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    key = (json.dumps(arch, sort_keys=True), length, batch)
    if key not in cache:
        name = cfg.arch.name
        skip = {"_target_", "name", "d_model", "n_layers"}
        overrides = [f"{k}={'null' if v is None else v}" for k, v in arch.items() if k not in skip]
        args = {"device": device, "d_model": arch["d_model"], "n_layers": arch["n_layers"], "tokens": batch * length,
                "steps": 3, "warmup": 1, "dtype": "bf16" if device == "cuda" else "fp32", "set": overrides}
        try:
            cache[key] = time_steps(name, length, args)["tokens_per_s"]
        except Exception as exc:  # out of memory, say: that run gets no estimate, the plan goes on
            print(f"# {name} at L={length}, batch {batch}: not measured ({type(exc).__name__}: {str(exc)[:80]})")
            cache[key] = None
    return cache[key]


def plan(overrides: list[str], rows: list[dict] | None, measure_on: str | None) -> list[dict]:
    """-> one row per run. measure_on: None (rates from `rows`), "run" (each run's own device), cpu, cuda."""
    from recipes import config_schema, experiment
    from recipes.model import n_params

    first = expand(overrides, {})[0]  # one run of the command line's lists, to read the preset's sweep
    preset = compose(first, hydra_cfg=True).hydra.sweeper.get("params") or {}
    out, cache = [], {}
    for run_overrides in expand(overrides, dict(preset)):
        cfg = compose(run_overrides)
        recipe = experiment.recipe_module(cfg.recipe)
        config_schema.check(cfg, recipe.STAGES)
        task = experiment.build_task(cfg.task)
        params = experiment.check_model(cfg, task, recipe.STAGES)
        backbone = n_params(experiment.build_body(cfg, task).backbone)
        spec = task.spec
        steps = stage_steps(cfg, recipe.STAGES, train_examples(cfg), spec.dual)
        length = spec.max_len
        seconds = 0.0
        device = (experiment.pick_device(cfg.device).type if measure_on == "run" else measure_on) or "cuda"
        for stage, n in steps.items():
            batch = int(cfg[stage].batch_size)
            tokens = batch * length * (2 if spec.dual and stage == "finetune" else 1)
            if measure_on:
                rate = measured_rate(cfg, length, batch, device, cache)
            else:
                rate = bench_rate(rows, cfg.arch.name, length, backbone) if rows else None
            seconds = None if rate is None or seconds is None else seconds + n * tokens / rate
        out.append({"task": cfg.task.name, "arch": cfg.arch.name, "recipe": cfg.recipe.name, "seed": cfg.seed,
                    "params": params, "length": length, "steps": steps,
                    "hours": None if seconds is None else seconds / 3600, "on": "GPU" if device == "cuda" else "CPU"})
    return out


def render(runs: list[dict]) -> str:
    on = sorted({r["on"] for r in runs}) or ["GPU"]
    unit = f"{'/'.join(on)} hours"
    lines = [f"| task | arch | recipe | seed | params | L | steps (pretrain + finetune) | est. {unit} |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        steps = " + ".join(f"{r['steps'][s]:,}" for s in ("pretrain", "finetune") if s in r["steps"])
        hours = "—" if r["hours"] is None else f"{r['hours']:,.2g}" if r["hours"] < 0.1 else f"{r['hours']:,.1f}"
        lines.append(f"| {r['task']} | {r['arch']} | {r['recipe']} | {r['seed']} | {r['params']:,} | {r['length']:,} "
                     f"| {steps} | {hours} |")
    known = [r["hours"] for r in runs if r["hours"] is not None]
    total = f"{sum(known):,.2f} {unit}" + ("" if len(known) == len(runs) else f" for the {len(known)} estimated")
    lines.append(f"\n{len(runs)} runs; {total if known else 'no estimate: pass --throughput FILE or --measure'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="as for run.py, e.g. experiment=lra_listops arch=s4,cnn seed=0,1,2")
    ap.add_argument("--throughput", type=Path, help="a bench.throughput JSON (e.g. runs/bench/throughput-cuda.json)")
    ap.add_argument("--measure", action="store_true",
                    help="time a few training steps of each backbone on the run's device (or --device)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="with --measure: measure here, not on the run's device")
    ap.add_argument("--out", type=Path, help="also write the runs as JSON here")
    args = ap.parse_intermixed_args(argv)  # overrides before, after or between the flags
    from recipes.errors import USER_ERRORS

    rows = None
    if args.throughput:
        if not args.throughput.is_file():
            print(f"error: --throughput {args.throughput} is not a file: run python -m bench.throughput --paper "
                  "on the GPU first (it writes runs/bench/throughput-cuda.json)", file=sys.stderr)
            return 2
        rows = json.loads(args.throughput.read_text())["rows"]
    if args.measure and args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("error: --measure --device cuda but CUDA is not available here; use --device cpu or "
                  "--throughput FILE", file=sys.stderr)
            return 2
    try:
        runs = plan([o for o in args.overrides if o != "-m"], rows, (args.device or "run") if args.measure else None)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(runs))
    if args.out:
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
