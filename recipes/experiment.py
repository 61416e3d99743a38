"""One run, start to finish: validate the config, prepare data, run the recipe, write result.json.

Every run folder ends with a `result.json` written atomically: status `ok` with metrics, or
`failed` with the reason (a diverged loss, an unexpected error). Mistakes the user can fix
(unknown names, impossible values, bad data, a folder holding another configuration) raise a
USER_ERRORS exception and write nothing, so no file ever claims a result that was not produced.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from archs.base import is_causal
from recipes import config_schema
from recipes.engine import checkpoint, compute, distributed
from recipes.engine.loop import NEW_WHEN_SET
from recipes.errors import USER_ERRORS, ConfigError, TrainingDiverged, root_cause, unwritable
from recipes.extras import baselines, export, probes, track
from recipes.model import build_body, build_classifier, n_params, pooling_for
from recipes.plugins import locate
from recipes.schema import VERSION, Context, combine, digest
from recipes.stages import objective_for, pixel_loss_for
from tasks.base import DataError, Task, label_fraction

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
# Keys that say where or how verbosely to run, not what is computed: left out of the config hash.
NOT_HASHED = ("out_root", "cache_dir", "progress", "device", "compute", "baselines", "probes", "logger", "search")


def announce(ctx: Context, body) -> None:
    """Log the run's header line, once a recipe has built its body (its ctx.announce): what runs, how big,
    on what, with which implementation, and where its files go."""
    cfg = ctx.cfg  # read at the call: a recipe may have replaced it (recipes/supervised_matched.py)
    log.info("run: task %s | arch %s | recipe %s | seed %s | params %s backbone + %s encoder | device %s | "
             "precision %s | impl %s | folder %s", cfg.task.name, cfg.arch.name, cfg.recipe.name, ctx.seed,
             f"{n_params(body.backbone):,}", f"{n_params(body.encoder):,}", ctx.device, ctx.compute.precision,
             implementation(body.backbone, cfg.arch.d_model, ctx.device), ctx.run_dir)


def implementation(backbone: torch.nn.Module, d_model: int, device: torch.device) -> str:
    """The backbone's `impl` on `device` ("torch" when it has none). Asked after one tiny forward there,
    since a backbone may choose at its first call (Mamba's cuda, cpp or torch scan; S4's Cauchy kernel)."""
    if not hasattr(backbone, "impl"):
        return "torch"
    training = backbone.training
    backbone.to(device).eval()  # eval: no dropout, so the probe draws no random numbers
    with torch.no_grad():
        backbone(torch.zeros(1, 2, d_model, device=device), torch.ones(1, 2, dtype=torch.bool, device=device))
    backbone.train(training)
    return str(backbone.impl)


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"sptbench-{version('sptbench')}"
    except PackageNotFoundError:
        return "unknown"


def resolve(cfg: DictConfig) -> dict:
    try:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config cannot be resolved: {str(exc).splitlines()[0]}") from exc
    plain.pop("hydra", None)
    return plain


def bars(cfg: DictConfig) -> bool:
    """Progress bars: where `progress` asks for them and a terminal shows them. Redirected to a file,
    their carriage returns would glue each bar to the next log line."""
    return bool(cfg.progress) and sys.stderr.isatty()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available here; use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r} is not one of auto, cpu, cuda")
    return torch.device(name)


def build_task(task_cfg: DictConfig) -> Task:
    """The task object; `task.train_fraction` is the suite's, not the task's: it is checked here and
    applied to the prepared train split by `label_subset`, the same way for every task."""
    params = OmegaConf.to_container(task_cfg, resolve=True)
    name = params.pop("name", "?")
    fraction = params.pop("train_fraction", 1.0)
    try:
        label_fraction(1, fraction, 0)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if "_target_" not in params:
        raise ConfigError(f"task '{name}' has no _target_: its YAML must name the task class")
    locate(params["_target_"], f"task '{name}'")  # an import failure as one line (recipes/plugins.py)
    try:
        return instantiate(params, _convert_="all")
    except Exception as exc:
        root = root_cause(exc)
        if isinstance(root, (ValueError, TypeError)):
            raise ConfigError(f"task '{name}' ({params.get('_target_')}): {root}") from exc
        raise


def check_model(cfg: DictConfig, task: Task, stages: tuple[str, ...]) -> int:
    """Build the run's classifier and check its pretraining choices before any data is prepared or
    generated, so that a bad (task, arch) combination fails in seconds; -> the classifier's parameter
    count. Thrown away: each recipe builds its own after seeding, so the run's numbers do not change."""
    body = build_body(cfg, task)
    causal = is_causal(body.backbone)
    model = build_classifier(body, cfg.arch.d_model, task.spec, pooling_for(cfg.model, causal))
    if "pretrain" in stages:
        objective_for(cfg.pretrain.objective, causal, cfg.arch)
        pixel_loss_for(cfg.pretrain.get("pixel_loss"), task.spec)
    return n_params(model)


def label_subset(splits: dict, task_cfg: DictConfig):
    """-> (splits with train cut to task.train_fraction, the whole train split). Nested in the
    fraction for a given task.data_seed (tasks.base.label_fraction)."""
    fraction = task_cfg.get("train_fraction", 1.0)
    full = splits["train"]
    if fraction == 1:
        return splits, full
    index = label_fraction(len(full), fraction, int(task_cfg.get("data_seed", 0) or 0))
    log.info("data: task.train_fraction=%s keeps %d of %d training examples", fraction, len(index), len(full))
    return {**splits, "train": full.subset(index)}, full


def recipe_module(recipe_cfg) -> object:
    """The recipe's module: `recipe._target_` (a module with run(ctx) and STAGES, e.g. a user's
    `mylab.recipes.distill`, its YAML found through hydra.searchpath like a plugin backbone's), or
    recipes/<name>.py for the built-in ones, whose YAMLs name none."""
    name = recipe_cfg.get("name") if hasattr(recipe_cfg, "get") else recipe_cfg
    target = recipe_cfg.get("_target_") if hasattr(recipe_cfg, "get") else None
    path = target or f"recipes.{name}"
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name and (path + ".").startswith(exc.name + "."):
            where = f"module {path}" if target else f"recipes/{name}.py"
            raise ConfigError(f"recipe '{name}': no {where} (a plugin recipe names its module with _target_; "
                              "put its package on PYTHONPATH or pip install -e it)") from exc
        raise
    if not hasattr(module, "run") or not hasattr(module, "STAGES"):
        raise ConfigError(f"recipe '{name}': module {path} must define run(ctx) and STAGES")
    return module


def hashed_config(plain: dict, stages: tuple[str, ...]) -> dict:
    """What defines a run (its config_hash, and with the seeds left out its group_hash): the resolved
    config without NOT_HASHED keys and without the stages its recipe does not run. finetune.init_from is
    left out while null (the hashes of runs from before it existed stay), and when set stands as where the
    weights come from: their sha256 and their pretraining key (recipes/extras/export.py), not the path."""
    unused = {"finetune", "pretrain"} - set(stages)
    hashed = {k: v for k, v in plain.items() if k not in NOT_HASHED and k not in unused}
    for stage in set(stages) & {"finetune", "pretrain"}:
        if stage in hashed:
            hashed[stage] = {k: v for k, v in hashed[stage].items() if k not in NEW_WHEN_SET or v is not None}
    if "finetune" in hashed and "init_from" in hashed["finetune"]:
        hashed["finetune"] = dict(hashed["finetune"])
        path = hashed["finetune"].pop("init_from")
        if path is not None:
            hashed["finetune"]["init_from"] = export.source(path, plain["arch"], plain["recipe"]["name"])
    return hashed


def seedless(cfg: DictConfig, hashed: dict) -> dict:
    """The hashed config without its seeds: what the runs of one group (a cell of the report) share.
    Seeds vary within a group. A pretraining seed that follows the run's (`${seed}`, or any expression of
    it) varies with it; one pinned to a constant (shared pretraining) stays, so the two designs are never
    pooled. Whether it follows is asked of the config itself: does it change when the run's seed does."""
    out = json.loads(json.dumps(hashed))
    out.pop("seed")
    if "pretrain" in out and "seed" in out["pretrain"]:
        other = copy.deepcopy(cfg)  # deep: a shallow copy's sections would still resolve against cfg
        OmegaConf.set_readonly(other, False)
        other.seed = cfg.seed + 1
        if other.pretrain.seed != cfg.pretrain.seed:
            out["pretrain"].pop("seed")
    return out


class FolderBusy(ConfigError):
    """Another process is running in this run folder (the same command started twice)."""


# What Hydra puts in a job folder before main() runs, and the run's lock: a folder holding only these
# holds nothing a rerun needs.
HYDRA_ONLY = {".hydra", "run.log", ".lock"}


def holds_nothing(run_dir: Path, log_empty: bool = False) -> bool:
    """Whether `run_dir` holds only Hydra's files (and, with `log_empty`, an empty run.log: made by
    this command, which has not logged yet)."""
    entries = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    log_file = run_dir / "run.log"
    return entries <= HYDRA_ONLY and not (log_empty and log_file.is_file() and log_file.stat().st_size)


def run(cfg: DictConfig, run_dir: Path, sweep: bool = False) -> dict:
    """Run one configuration in `run_dir`; return the result dict that was written.

    One process at a time per folder: a second copy of the same command is refused in one line
    (FolderBusy), never trains the folder twice. A command refused for a mistake of the user's before it
    wrote anything leaves no folder behind, so that reports never count it as an unfinished run; with
    `sweep` (a sweep's job) the folder stays, so that the sweep's report lists the job and why; and the
    job's log lines name its validation accuracy only, as a study reads test numbers once, at the end,
    in the sweep's report (result.json keeps them)."""
    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 holds the folder for its process group
        return execute(cfg, run_dir, sweep)
    made_here = holds_nothing(run_dir, log_empty=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderBusy(f"{run_dir} is in use by another process running the same configuration: wait for it "
                         "to finish (then this command finds the result), or run this one elsewhere with "
                         "out_root=... or hydra.run.dir=...") from None
    except OSError:
        lock = None  # an unwritable folder: execute() says so in one line
    try:
        return execute(cfg, run_dir, sweep)
    except USER_ERRORS:
        if made_here and not sweep and holds_nothing(run_dir):
            if lock is not None:
                lock.release()
                lock = None
            remove_rejected(run_dir, Path(str(cfg.get("out_root") or run_dir.parent)).resolve())
        raise
    finally:
        if lock is not None:
            lock.release()


def remove_rejected(run_dir: Path, out_root: Path) -> None:
    """Delete a refused run's folder, and the levels above it that held only it, up to out_root."""
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir.resolve().parent
    while folder != out_root and out_root in folder.parents and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def execute(cfg: DictConfig, run_dir: Path, sweep: bool = False) -> dict:
    """run()'s work, under its lock."""
    started = time.perf_counter()
    plain = resolve(cfg)
    recipe = recipe_module(cfg.recipe)
    config_schema.check(cfg, recipe.STAGES)  # every setting's type and range, before anything is prepared
    if "_target_" in cfg.arch:  # a plugin off the path fails now, not after the data is prepared
        locate(cfg.arch._target_, f"arch '{cfg.arch.name}'")
    hashed = hashed_config(plain, recipe.STAGES)
    config_hash = digest(hashed)
    head = {"task": cfg.task.name, "arch": cfg.arch.name, "recipe": cfg.recipe.name, "seed": cfg.seed,
            "config_hash": config_hash, "group_hash": digest(seedless(cfg, hashed))}

    # The task and its data source first: a missing data folder is said as such, not as a clash with a
    # finished run in the folder this command would use.
    task = build_task(cfg.task)
    data_key = task.data_key()  # cheap (parameters, or the source files' names and sizes); DataError when absent

    result_path = run_dir / "result.json"
    identity = {"config_hash": config_hash, "config": hashed}
    wanted = probes.settings(cfg)
    old = checkpoint.read_intact(result_path)  # a damaged one is moved aside and the run recomputed
    if old is not None:
        if old.get("config_hash") != config_hash:
            raise ConfigError(f"{run_dir} holds a run of another configuration "
                              f"({checkpoint.describe_diff(old.get('config', {}), plain)}): give this one its "
                              "own folder with out_root=... or hydra.run.dir=... (or delete that folder, if its "
                              "result is not needed)")
        if old.get("status") == "ok":
            log.info("already complete: %s (%s); delete it to rerun", result_path, accuracies(old, sweep))
            if wanted is not None and (old.get("probes") or {}).get("settings") != wanted:
                return add_probes(cfg, run_dir, old, identity)
            return old
        log.info("previous attempt failed (%s); running again", old.get("reason"))

    device = distributed.setup(pick_device(cfg.device))  # this rank's GPU under torchrun
    how = compute.resolve(cfg.compute, device)
    if hashed.get("finetune", {}).get("init_from"):  # a body for another vocabulary: refused before the data
        export.check_vocab(export.read(cfg.finetune.init_from)[0], cfg.finetune.init_from, task.spec)
    task.progress = bars(cfg)  # its data preparation's bars (tasks.base.Task.progress)
    cache_dir = Path(cfg.cache_dir)
    for folder, option in ((run_dir, "out_root (or hydra.run.dir)"), (cache_dir, "cache_dir")):
        problem = unwritable(folder)
        if problem:
            raise ConfigError(f"cannot write to {folder} ({problem}): set {option} to a writable folder")
    track.start(cfg.get("logger"), run_dir, Path(cfg.out_root), head, plain)  # logger=...: before the data, too
    base = {"schema": VERSION, **head, "device": device.type, "hardware": compute.hardware(device, how),
            "code_version": code_version(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__}, "config": plain}
    try:
        check_model(cfg, task, recipe.STAGES)  # before the data: seconds, not the minutes preparing it takes
        splits, full_train = label_subset(task.splits(cache_dir), cfg.task)
        floors = baselines.cached(splits, task.spec, data_key, cache_dir) if cfg.get("baselines", True) \
            else None
        ctx = Context(cfg=cfg, task=task, splits=splits, run_dir=run_dir, cache_dir=cache_dir, device=device,
                      seed=cfg.seed, identity=identity, progress=bars(cfg),
                      compute=how, full_train=full_train)
        ctx.announce = lambda body: announce(ctx, body)
        out = recipe.run(ctx)
    except KeyboardInterrupt:  # also guard.Preempted: the rerun resumes, and counts this attempt's time
        track.finish(None)
        record_attempt(run_dir, time.perf_counter() - started)
        raise
    except (ConfigError, DataError, checkpoint.CheckpointError):
        track.finish(None)
        raise
    except TrainingDiverged as exc:
        track.finish(write_failed(result_path, base, str(exc), started, diverged=exc.details))
        raise
    except Exception as exc:
        track.finish(write_failed(result_path, base, f"{type(exc).__name__}: {exc}", started))
        raise
    wall = account_time(out["wall_time_s"], (out.get("pretrain") or {}).get("reused", False), run_dir,
                        time.perf_counter() - started)
    result = combine(base, {"status": "ok", "reason": None, "created": datetime.now(timezone.utc).isoformat(
        timespec="seconds")}, out, {"baselines": floors} if floors is not None else {},
        {"wall_time_s": {k: wall[k] for k in ("overhead", "total")}})
    if distributed.is_main():  # under torchrun, one process writes
        checkpoint.write_json(result_path, result)
    track.finish(result)
    log.info("result: %s %s -> %s", cfg.recipe.name, accuracies(result, sweep), result_path)
    return result


def accuracies(result: dict, sweep: bool) -> str:
    """A finished run's accuracies for its log line; a sweep's job leaves test out (see run())."""
    metrics = result["metrics"]
    if sweep:
        return f"val_acc {metrics['val_acc']:.4f}; test in result.json, for the sweep's report"
    return f"test_acc {metrics['test_acc']:.4f} val_acc {metrics['val_acc']:.4f}"


def add_probes(cfg: DictConfig, run_dir: Path, result: dict, identity: dict) -> dict:
    """A complete run without these probes (finished before they existed, or with other settings)
    gets them from its checkpoints, and its result.json is rewritten with them."""
    device = pick_device(cfg.device)
    task = build_task(cfg.task)
    task.progress = bars(cfg)
    splits = task.splits(Path(cfg.cache_dir))
    try:
        result = probes.backfill(cfg, task, splits, run_dir, result, identity, device)
    except (FileNotFoundError, checkpoint.CheckpointError) as exc:
        raise ConfigError(f"cannot add probes to {run_dir}: {str(exc).splitlines()[0]}; "
                          "delete the run folder to rerun it, or set probes.enabled=false") from exc
    if distributed.is_main():
        checkpoint.write_json(run_dir / "result.json", result)
    log.info("probes: added to %s (%.1f s)", run_dir / "result.json", result["wall_time_s"]["probes"])
    return result


# Seconds of this folder's earlier attempts that ended without a result (interrupted, preempted, failed):
# the result's total counts them, so that a resumed run's time is the time it took.
ATTEMPTS = "attempts.json"


def record_attempt(run_dir: Path, seconds: float) -> None:
    if distributed.is_main():
        past = (checkpoint.read_intact(run_dir / ATTEMPTS) or {}).get("seconds", [])
        checkpoint.write_json(run_dir / ATTEMPTS, {"seconds": [*past, round(seconds, 3)]})


def account_time(wall: dict, reused_pretraining: bool, run_dir: Path, this_attempt: float) -> dict:
    """result.json's wall_time_s: each stage's own seconds over all its attempts (a pretraining reused
    from the cache at what it cost when it ran), the probes', `overhead` (everything else this run did:
    preparing data, building, testing; over all attempts) and `total`, their sum, each counted once.
    A killed attempt (SIGKILL) records nothing: its stage time up to the last checkpoint still counts,
    and the overhead is then a lower bound (never negative)."""
    earlier = sum((checkpoint.read_intact(run_dir / ATTEMPTS) or {}).get("seconds", []))
    stages = {k: v for k, v in wall.items() if k in ("pretrain", "finetune")}
    probed = wall.get("probes", 0.0)
    own = sum(v for k, v in stages.items() if not (k == "pretrain" and reused_pretraining))
    overhead = max(0.0, earlier + this_attempt - own - probed)
    return {**wall, "overhead": round(overhead, 3), "total": round(sum(stages.values()) + probed + overhead, 3)}


def write_failed(path: Path, base: dict, reason: str, started: float, **extra) -> dict:
    """Write (on rank 0) and return a failed run's result; its attempt's time is counted by the rerun."""
    log.error("run failed: %s", reason)
    record_attempt(path.parent, time.perf_counter() - started)
    failed = combine(base, {"status": "failed", "reason": reason, "created": datetime.now(timezone.utc).isoformat(
        timespec="seconds")}, extra, {"wall_time_s": {"total": round(time.perf_counter() - started, 3)}})
    if distributed.is_main():
        checkpoint.write_json(path, failed)
    return failed
