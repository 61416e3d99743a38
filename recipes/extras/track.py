"""Experiment trackers: `logger=tensorboard` or `logger=wandb` (conf/logger/; default `logger=none`).

A tracker gets a copy of what the run folder records: the resolved config when the run starts, every
metrics row as train.write_log writes it (metrics.jsonl, and a pretraining stage's log in the cache),
and the final result (result.json: status, metrics, baselines). Its run is named after the run folder
(e.g. listops/transformer/spt/seed0, relative to out_root). The run folder stays the record: trackers
say how to watch runs, not what is computed, so `logger` is outside the config hash and the folder name.

TensorBoard: event files in the run folder itself, so `tensorboard --logdir runs` names each run by its
folder. Weights & Biases: one W&B run per attempt, grouped by configuration (the folder without its
seed), files under <run folder>/wandb; `logger.mode=offline` needs no account (`wandb sync` later).
Under torchrun, rank 0 alone tracks (it alone writes the metrics log).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
from pathlib import Path

from recipes.engine import distributed
from recipes.engine.checkpoint import flatten
from recipes.errors import ConfigError

log = logging.getLogger(__name__)
LOGGERS = ("none", "tensorboard", "wandb")
_active = None  # the tracker of the run in progress in this process; write_log feeds it (rows())


def numbers(d: dict, prefix: str = "") -> dict:
    """The finite numbers of a nested dict as {prefix + dotted key: float} (no bools, None or text)."""
    return {prefix + k: float(v) for k, v in flatten(d).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """Rows are logged once each, by (stage, step): write_log rewrites the whole log at every validation."""

    def __init__(self):
        self.seen: set[tuple] = set()

    def rows(self, rows: list[dict]) -> None:
        new = [r for r in rows if (r.get("stage"), r.get("step")) not in self.seen]
        for row in new:
            self.seen.add((row.get("stage"), row.get("step")))
            self.row(str(row.get("stage")), int(row.get("step") or 0),
                     numbers({k: v for k, v in row.items() if k not in ("stage", "step")}))
        if new:
            self.flush()

    def row(self, stage: str, step: int, values: dict) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def finish(self, result: dict | None) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    def __init__(self, run_dir: Path, config: dict):
        super().__init__()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))
        self.writer.add_text("config", as_markdown(config))
        self.writer.flush()

    def row(self, stage, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)

    def flush(self):
        self.writer.flush()

    def finish(self, result):
        if result is not None:
            step = int((result.get("steps") or {}).get("finetune") or 0)
            for key, value in numbers({k: result.get(k) or {} for k in ("metrics", "baselines")}).items():
                self.writer.add_scalar(f"result/{key}", value, step)
            self.writer.add_text("result", as_markdown(result))
        self.writer.close()


class WandB(Tracker):
    def __init__(self, run_dir: Path, options: dict, name: str, head: dict, config: dict):
        super().__init__()
        import wandb

        self.run = wandb.init(project=options.get("project"), entity=options.get("entity"), mode=options.get("mode"),
                              tags=list(options.get("tags") or []), name=name, group=str(Path(name).parent),
                              job_type=head["recipe"], dir=str(run_dir),
                              config={**config, "config_hash": head["config_hash"], "group_hash": head["group_hash"]},
                              # The process's own output (run.log, tqdm) stays as it is.
                              settings=wandb.Settings(console="off", silent=True))
        self.stages: set[str] = set()

    def row(self, stage, step, values):
        if stage not in self.stages:  # each stage counts its own steps (pretraining and fine-tuning start at 1)
            self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
            self.stages.add(stage)
        self.run.log({f"{stage}/step": step, **{f"{stage}/{k}": v for k, v in values.items()}})

    def finish(self, result):
        if result is not None:
            self.run.summary.update({"status": result.get("status"), "reason": result.get("reason"),
                                     **numbers({k: result.get(k) or {} for k in ("metrics", "baselines")})})
        self.run.finish(exit_code=0 if result is not None and result.get("status") == "ok" else 1)


def as_markdown(obj: dict) -> str:
    """JSON as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in json.dumps(obj, indent=2, sort_keys=True, default=str).splitlines())


def run_name(run_dir: Path, out_root: Path) -> str:
    """The run folder relative to out_root (task/arch/recipe/.../seed<k>), or as given when outside it."""
    try:
        return Path(run_dir).resolve().relative_to(Path(out_root).resolve()).as_posix()
    except ValueError:
        return Path(run_dir).as_posix()


def start(options, run_dir: Path, out_root: Path, head: dict, config: dict) -> None:
    """Open the tracker `options` (the `logger` config) names for the run in `run_dir`, and log its config.
    A missing package or a tracker that cannot start is one ConfigError, before any data or training."""
    finish(None)  # a run of this process that ended without finishing its tracker (interrupted)
    options = dict(options or {})
    name = options.get("name", "none")
    if name not in LOGGERS:
        raise ConfigError(f"logger.name={name!r} is not one of {', '.join(LOGGERS)} (choose with logger=NAME)")
    if name == "none":
        return
    module = {"tensorboard": "tensorboard", "wandb": "wandb"}[name]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"logger={name} needs the {module} package, which is not installed: "
                          f"pip install -e \".[{module}]\" (or pip install {module})") from exc
    if not distributed.is_main():
        return
    global _active
    if name == "tensorboard":
        _active = TensorBoard(run_dir, config)
        return
    try:
        _active = WandB(run_dir, options, run_name(run_dir, out_root), head, config)
    except Exception as exc:  # no account, no network, a bad entity: W&B's own message, in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"logger=wandb could not start a run ({first}): run `wandb login`, or set "
                          "logger.mode=offline (sync later with `wandb sync`)") from exc


def rows(rows: list[dict]) -> None:
    """Log the rows of a metrics log that the active tracker has not logged yet (train.write_log)."""
    if _active is not None:
        _active.rows(rows)


def finish(result: dict | None) -> None:
    """Log the final result (None: the run stopped without one) and close the active tracker."""
    global _active
    tracker, _active = _active, None
    if tracker is None:
        return
    try:
        tracker.finish(result)
    except Exception as exc:  # the run folder is written by now: only the tracker's copy of the result is missing
        log.warning("logger: could not close the %s run (%s: %s); the run folder holds the result",
                    type(tracker).__name__, type(exc).__name__, exc)
