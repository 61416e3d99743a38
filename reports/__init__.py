"""Reports read saved results only (every `result.json` under a folder); they import nothing from
the training code, so a report is a pure function of a folder of result files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def load_results(root: str | Path) -> pd.DataFrame:
    """One row per result.json under root: identity, status, metrics, budget. Unreadable files
    become rows with status 'unreadable' rather than vanishing."""
    rows = []
    for path in sorted(Path(root).rglob("result.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            rows.append({"path": str(path), "status": "unreadable", "reason": str(exc)})
            continue
        rows.append({
            "path": str(path.parent), "task": r.get("task"), "arch": r.get("arch"), "recipe": r.get("recipe"),
            "seed": r.get("seed"), "status": r.get("status"), "reason": r.get("reason"),
            "config_hash": r.get("config_hash"), "group_hash": r.get("group_hash"),
            "device": r.get("device"), "impl": r.get("impl"),
            **{k: v for k, v in (r.get("metrics") or {}).items() if k in ("test_acc", "val_acc")},
            "params": (r.get("params") or {}).get("total"),
            "pretrain_steps": (r.get("steps") or {}).get("pretrain", 0),
            "finetune_steps": (r.get("steps") or {}).get("finetune"),
            # Compute spent on this result: every stage's own time, a reused pretraining at what it
            # cost when it ran — so a cached stage does not make SPT look cheap.
            "compute_s": sum(v for k, v in (r.get("wall_time_s") or {}).items() if k != "total") or None,
        })
    return pd.DataFrame(rows)


def duplicates(df: pd.DataFrame) -> pd.DataFrame:
    """Successful runs whose exact configuration (seed included) already appears in another folder."""
    ok = df[df["status"] == "ok"]
    return ok[ok.duplicated("config_hash", keep="first")]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, arch, recipe, group_hash) over successful runs: n, mean and sample std of accuracy,
    mean compute time (seconds over all stages). Runs whose configurations differ beyond the seed
    are never pooled, and a configuration found in several folders counts once."""
    ok = df[df["status"] == "ok"].drop_duplicates("config_hash", keep="first")
    if ok.empty:
        return pd.DataFrame()
    keys = ["task", "arch", "recipe", "group_hash"]
    out = ok.groupby(keys).agg(
        n=("test_acc", "size"), test_acc_mean=("test_acc", "mean"), test_acc_std=("test_acc", "std"),
        val_acc_mean=("val_acc", "mean"), params=("params", "first"), pretrain_steps=("pretrain_steps", "first"),
        finetune_steps=("finetune_steps", "first"), compute_s=("compute_s", "mean"),
    )
    return out.reset_index()
