"""Figures (matplotlib, Agg: no display needed): accuracy bars with CIs, the gap under each recipe,
and validation-accuracy curves. Each function writes one PNG and returns its path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 110


def safe(name: str) -> str:
    """A file-name-safe version of a name read from result files."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))[:60] or "_"


def recipe_order(names) -> list[str]:
    """From scratch first, then SPT, then any other recipe: bars read left to right as a before/after."""
    rank = {"supervised": 0, "spt": 1}
    return sorted(set(names), key=lambda r: (rank.get(r, 2), str(r)))


def save(fig, path: Path) -> Path:
    """Write the PNG under a temporary name, then rename: a reader never sees half a figure."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _errors(means, los, his):
    """Asymmetric error bars; cells without a CI (1 seed) get none."""
    lower = [m - lo if lo is not None and not pd.isna(lo) else 0 for m, lo in zip(means, los)]
    upper = [hi - m if hi is not None and not pd.isna(hi) else 0 for m, hi in zip(means, his)]
    return np.array([lower, upper]) * 100


def grouped_bars(ax, groups: list[str], series: dict[str, tuple[list, list, list]], ylabel: str) -> None:
    """series: label -> (values, ci_lo, ci_hi) aligned with groups (None = missing)."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, (vals, los, his)) in enumerate(series.items()):
        present = [j for j, v in enumerate(vals) if v is not None]
        means = [vals[j] for j in present]
        err = _errors(means, [los[j] for j in present], [his[j] for j in present])
        ax.bar(x[present] + (i - (len(series) - 1) / 2) * width, np.array(means) * 100, width, yerr=err,
               capsize=3, label=str(label))
    ax.set_xticks(x, [str(g) for g in groups], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def accuracy_bars(cells: pd.DataFrame, out: Path) -> Path:
    """One panel per task: test accuracy per arch (groups) and recipe (bars), 95% CI error bars."""
    tasks = sorted(cells.task.unique())
    cols = min(len(tasks), 3)
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(5, 4.5 * cols), 4 * rows), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        c = cells[cells.task == task]
        # One group of bars per arch; a (arch, recipe) run with several configurations gets one group
        # per configuration, labelled with its hash, so nothing is drawn as if pooled.
        n_groups = c.groupby(["arch", "recipe"]).group_hash.transform("nunique")
        xkey = [a if k == 1 else f"{a} [{g[:6]}]" for a, g, k in zip(c.arch, c.group_hash, n_groups)]
        c = c.assign(x=xkey)
        names = sorted(set(xkey))
        series = {}
        for recipe in recipe_order(c.recipe):
            rows = [c[(c.x == x) & (c.recipe == recipe)] for x in names]
            series[recipe] = ([r["mean"].iloc[0] if len(r) else None for r in rows],
                              [r.ci_lo.iloc[0] if len(r) else None for r in rows],
                              [r.ci_hi.iloc[0] if len(r) else None for r in rows])
        grouped_bars(ax, names, series, "test accuracy (%)")
        ax.set_title(str(task))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out / "accuracy.png")


def gap_bars(gaps: dict[str, dict[str, dict | None]], out: Path) -> Path:
    """gaps: task -> recipe -> stats.gap result (None when < 2 archs). Bars per task and recipe."""
    tasks = sorted(gaps)
    recipes = recipe_order(r for t in tasks for r in gaps[t])
    series = {}
    for recipe in recipes:
        found = [gaps[t].get(recipe) for t in tasks]
        series[recipe] = ([g["gap"] if g else None for g in found],
                          [g["gap_ci"][0] if g and g["gap_ci"] else None for g in found],
                          [g["gap_ci"][1] if g and g["gap_ci"] else None for g in found])
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(tasks) + 3), 4))
    grouped_bars(ax, tasks, series, "best − worst architecture (points)")
    ax.set_title("Gap between architectures under each recipe")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out / "gap.png")


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Rows (label, path, step, val_acc) -> per label and step: mean, sample std (NaN below 2 seeds), n."""
    by = curves.groupby(["label", "step"], sort=True).val_acc
    return pd.DataFrame({"mean": by.mean(), "std": by.std(ddof=1), "n": by.size()}).reset_index()


def curves(task: str, stats: pd.DataFrame, path: Path) -> Path:
    """Validation accuracy vs fine-tuning step from curve_stats, one line per configuration: the mean
    over seeds at each step, and a band of ± 1 std where >= 2 seeds reached that step."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, g in stats.groupby("label", sort=True):
        line, = ax.plot(g.step, g["mean"] * 100, label=str(label), marker="." if len(g) < 30 else None)
        band = g[g.n >= 2]
        if len(band):
            ax.fill_between(band.step, (band["mean"] - band["std"]) * 100, (band["mean"] + band["std"]) * 100,
                            color=line.get_color(), alpha=0.2)
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{task}: validation accuracy (mean over seeds ± 1 std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)
