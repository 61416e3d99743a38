"""Read a folder of runs: every `result.json`, run folders that never wrote one, and metrics logs.

A run folder is a Hydra job folder (`.hydra/config.yaml`) or a folder with a `checkpoints/`
subfolder or `metrics.jsonl`; the pretraining cache (`_cache/`) and report folders are neither.
result.json is read through recipes/schema.py (a torch-free leaf, the one module reports import from
the training code: it defines the file, and reads every version of it); metrics.jsonl rows are those
of recipes/engine/loop.py (stage, step, val_acc, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recipes.schema import STAGES, Result, read_result

REQUIRED = ("task", "arch", "recipe", "seed", "group_hash", "config_hash")
# Reference floors a run computed from its own data (result.json `baselines`): column -> (part, field).
BASELINES = {"majority_val_acc": ("majority", "val_acc"), "majority_test_acc": ("majority", "test_acc"),
             "order_free_val_acc": ("order_free", "val_acc"), "order_free_test_acc": ("order_free", "test_acc"),
             "unigram_val_acc": ("unigram", "val_acc")}
# Where each stage stopped (result.json `stopping`, recipes/engine/loop.py; `stop` is its field `steps`). None
# where a result predates it, or the stage did not run (no pretraining in supervised recipes).
STOPPING = ("stop", "cap", "best_step", "epochs", "reason", "patience", "converged")
STOPPING_COLUMNS = [f"{stage}_{col}" for stage in STAGES for col in STOPPING]
COLUMNS = ["path", "task", "arch", "recipe", "seed", "status", "reason", "config_hash", "group_hash", "device",
           "impl", "test_acc", "val_acc", "params", "pretrain_steps", "finetune_steps", "compute_s",
           "pretrain_reused", "code_version", "pretrain_val_acc", *BASELINES, "baseline_n", *STOPPING_COLUMNS]


def fraction(v) -> float | None:
    """An accuracy read from a file, or None when it is missing or not a number in [0, 1]."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
    return float(v) if ok else None


def _part(d, name: str) -> dict:
    v = d.get(name) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def baselines(r: Result) -> dict:
    """result.json `baselines` as BASELINES columns and `baseline_n` ('500/500/500': train/val/test); None
    where a result lacks them (written before runs recorded them) or holds something that is no accuracy."""
    b = r.baselines
    out = {col: fraction(_part(b, part).get(field)) for col, (part, field) in BASELINES.items()}
    n = _part(b, "n")
    out["baseline_n"] = "/".join(str(n.get(s, "?")) for s in ("train", "val", "test")) if n else None
    return out


def _count(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def stopping(r: Result) -> dict:
    """result.json `stopping` as STOPPING_COLUMNS; a field missing or of the wrong type reads as None
    (unknown), never as a guess."""
    out = {}
    for stage in STAGES:
        s = r.stopped(stage)
        epochs = s.get("epochs")
        out.update({f"{stage}_stop": _count(s.get("steps")), f"{stage}_cap": _count(s.get("cap")),
                    f"{stage}_best_step": _count(s.get("best_step")),
                    f"{stage}_epochs": float(epochs) if isinstance(epochs, (int, float))
                    and not isinstance(epochs, bool) else None,
                    f"{stage}_reason": s.get("reason") if isinstance(s.get("reason"), str) else None,
                    f"{stage}_patience": _count(s.get("patience")),
                    f"{stage}_converged": s.get("converged") if isinstance(s.get("converged"), bool) else None})
    return out


def _row(path: Path, r: Result) -> dict:
    return {
        "path": str(path.parent), "task": r.task, "arch": r.arch, "recipe": r.recipe, "seed": r.seed,
        "status": r.status, "reason": r.reason, "config_hash": r.config_hash, "group_hash": r.group_hash,
        "device": r.hardware_label, "impl": r.impl, "test_acc": r.metrics.get("test_acc"),
        "val_acc": r.metrics.get("val_acc"), "params": r.params.get("total"),
        "pretrain_steps": r.steps.get("pretrain", 0), "finetune_steps": r.steps.get("finetune"),
        # Time spent on this result, a reused pretraining at what it cost when it ran, so that a cached stage
        # does not make SPT look cheap (Result.compute_s: also for files from before `overhead`).
        "compute_s": r.compute_s, "pretrain_reused": r.pretrain.get("reused"), "code_version": r.code_version,
        "pretrain_val_acc": fraction(r.metrics.get("pretrain_val_acc")), **baselines(r), **stopping(r),
    }


def _check(row: dict) -> str | None:
    """Why an 'ok' result cannot be used, or None."""
    missing = [k for k in REQUIRED if row[k] is None]
    if missing:
        return f"result.json has status ok but lacks {', '.join(missing)}"
    acc = row["test_acc"]
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        return f"result.json has status ok but metrics.test_acc={acc!r} is not an accuracy in [0, 1]"
    return None


def last_error(run_dir: Path) -> str | None:
    """The last ERROR line of the run's log (a configuration error ends a run before result.json)."""
    log = run_dir / "run.log"
    if not log.is_file():
        return None
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if "[ERROR]" in ln]
    except OSError:
        return None
    return lines[-1].split("[ERROR] - ", 1)[-1].strip() if lines else None


def is_run_folder(d: Path) -> bool:
    return (d / ".hydra" / "config.yaml").is_file() or (d / "checkpoints").is_dir()


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per run under root (COLUMNS). status: ok | failed | unreadable | invalid | unfinished |
    whatever else a result.json says; `reason` says why a run is not ok."""
    root = Path(root)
    rows = []
    with_result = set()
    for path in sorted(root.rglob("result.json")):
        with_result.add(path.parent)
        try:
            r = read_result(path)  # checks the checksum: a damaged or edited result is never counted
        except (OSError, ValueError) as exc:
            rows.append({"path": str(path.parent), "status": "unreadable", "reason": f"result.json: {exc}"})
            continue
        row = _row(path, r)
        if row["status"] == "ok":
            problem = _check(row)
            if problem:
                row.update(status="invalid", reason=problem)
        elif row["status"] is None:
            row.update(status="invalid", reason="result.json has no status")
        elif not row["reason"]:
            row["reason"] = f"status {row['status']} without a reason"
        rows.append(row)
    for d in sorted({p.parent for p in root.rglob("*") if p.name in (".hydra", "checkpoints", "metrics.jsonl")}):
        if d in with_result or not is_run_folder(d) or any(part.startswith("_") for part in d.relative_to(root).parts):
            continue
        rows.append({"path": str(d), **identity_from_folder(d), "status": "unfinished",
                     "reason": last_error(d) or "no result.json: still running, interrupted or killed "
                                                "(rerun the same command to resume)"})
    df = pd.DataFrame(rows, columns=COLUMNS)
    # A column of seeds with a gap (an unreadable run) would turn float: keep 3 as 3, not 3.0.
    df["seed"] = pd.Series([int(v) if isinstance(v, float) and v.is_integer() else v for v in df.seed],
                           index=df.index, dtype=object)
    return df


def identity_from_folder(d: Path) -> dict:
    """task/arch/recipe/seed of a run without result.json, from Hydra's saved config when readable."""
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        return {"task": OmegaConf.select(cfg, "task.name"), "arch": OmegaConf.select(cfg, "arch.name"),
                "recipe": OmegaConf.select(cfg, "recipe.name"), "seed": OmegaConf.select(cfg, "seed")}
    except Exception:  # an unfinished run is listed whatever state its folder is in
        return {}


def load_config(run_path: str | Path) -> dict:
    """The resolved config stored in a run's result.json ({} when absent)."""
    try:
        return read_result(Path(run_path) / "result.json").config
    except (OSError, ValueError):
        return {}


def flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a config's settings by their dotted names."""
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def usable(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """-> (ok runs counted once, ok runs that repeat a configuration already counted). A configuration
    (config_hash, seed included) found in several folders is one result, not extra seeds."""
    ok = runs[runs["status"] == "ok"].sort_values("path")
    repeated = ok.duplicated("config_hash", keep="first")
    return ok[~repeated].copy(), ok[repeated].copy()


def load_curves(paths) -> pd.DataFrame:
    """Fine-tuning validation rows of each run's metrics.jsonl: path, step, val_acc. Missing or torn
    logs contribute nothing (the run's result.json is what counts)."""
    rows = []
    for p in paths:
        log = Path(p) / "metrics.jsonl"
        if not log.is_file():
            continue
        for line in log.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and r.get("stage") == "finetune" and isinstance(r.get("val_acc"), (int, float)):
                rows.append({"path": str(p), "step": r.get("step"), "val_acc": r["val_acc"]})
    return pd.DataFrame(rows, columns=["path", "step", "val_acc"])
