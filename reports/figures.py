"""Figures (matplotlib, Agg: no display needed): accuracy bars with CIs, the gap under each recipe,
validation-accuracy curves, and accuracy and SPT's effects along a study axis. Each function writes
one PNG and returns its path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports import stats  # noqa: E402

DPI = 110


def safe(name: str) -> str:
    """A file-name-safe version of a name read from result files."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(name))[:60] or "_"


def recipe_rank(name) -> tuple:
    """From scratch first, then SPT, then its compute-matched control, then any other recipe: bars read
    left to right as a before/after."""
    return {"supervised": 0, "spt": 1, "supervised_matched": 2}.get(name, 3), str(name)


def recipe_order(names) -> list[str]:
    return sorted(set(names), key=recipe_rank)


def save(fig, path: Path) -> Path:
    """Write the PNG under a temporary name, then rename: a reader never sees half a figure."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")  # "tight": legends placed outside the axes
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


def legend_outside(fig, axes) -> None:
    """One legend for the figure, right of the panels, so that it never hides data."""
    found = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    if found:
        fig.legend(found.values(), found.keys(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


STYLES = ["-", "--", "-.", ":"]  # line styles, for the second (third...) series of one colour
REFERENCE_STYLE = {"order-free baseline (test)": "--", "majority class (test)": ":"}


def accuracy_bars(cells: pd.DataFrame, out: Path, lines: dict | None = None, places: dict | None = None) -> Path:
    """One panel per task: test accuracy per arch (groups) and recipe (bars), 95% CI error bars. lines:
    task -> {label: accuracy or None}, reference lines drawn across the panel (REFERENCE_STYLE); places:
    task -> {group_hash: axis value text}, how a task with a study axis labels its configurations."""
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
        place = (places or {}).get(task)
        xkey = [f"{a} @ {place.get(g, g[:6])}" if place else a if k == 1 else f"{a} [{g[:6]}]"
                for a, g, k in zip(c.arch, c.group_hash, n_groups)]
        c = c.assign(x=xkey)
        names = sorted(set(xkey))
        series = {}
        for recipe in recipe_order(c.recipe):
            rows = [c[(c.x == x) & (c.recipe == recipe)] for x in names]
            series[recipe] = ([r["mean"].iloc[0] if len(r) else None for r in rows],
                              [r.ci_lo.iloc[0] if len(r) else None for r in rows],
                              [r.ci_hi.iloc[0] if len(r) else None for r in rows])
        grouped_bars(ax, names, series, "test accuracy (%)")
        for label, value in ((lines or {}).get(task) or {}).items():
            if value is not None:
                ax.axhline(100 * value, color="0.35", lw=1.2, ls=REFERENCE_STYLE.get(label, "--"), label=label)
        ax.set_title(str(task))
    fig.tight_layout()
    legend_outside(fig, axes.flat)
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
    fig.tight_layout()
    legend_outside(fig, [ax])
    return save(fig, out / "gap.png")


def curve_stats(curves: pd.DataFrame) -> pd.DataFrame:
    """Rows (label, path, step, val_acc) -> per label and step: mean, sample std (NaN below 2 seeds), n."""
    by = curves.groupby(["label", "step"], sort=True).val_acc
    return pd.DataFrame({"mean": by.mean(), "std": by.std(ddof=1), "n": by.size()}).reset_index()


def split_label(label: str) -> tuple[str, str]:
    """A curve label `arch/recipe`, with ` [hash]` after it when the pair has several configurations
    (build.curve_summary) -> (arch, the rest). A label of another shape is its own arch."""
    arch, sep, rest = str(label).partition("/")
    return (arch, rest) if sep else (str(label), "")


def curves_figure(task: str, stats: pd.DataFrame):
    """Validation accuracy vs fine-tuning step from curve_stats: one panel per arch (a shared y axis), one
    line per configuration with the mean over seeds at each step, and a band of ± 1 std where >= 2 seeds
    reached that step. A recipe has one colour in every panel, a second configuration of one recipe
    another line style; one legend, right of the panels. -> the matplotlib Figure."""
    parts = {label: split_label(label) for label in stats.label.unique()}
    archs = sorted({a for a, _ in parts.values()})
    recipes = recipe_order(r.split(" [")[0] for _, r in parts.values())
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = 2 if len(archs) == 4 else min(len(archs), 3)
    rows = -(-len(archs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(archs):]:
        ax.set_visible(False)
    for ax, arch in zip(axes.flat, archs):
        mine = stats[stats.label.map(lambda x: parts[x][0]) == arch]
        groups = dict(list(mine.groupby("label", sort=True)))
        for label in sorted(groups, key=lambda x: (recipes.index(parts[x][1].split(" [")[0]), parts[x][1])):
            g, rest = groups[label], parts[label][1]
            recipe = rest.split(" [")[0]
            # This panel's configurations of the recipe (labels with a hash), one line style each.
            same = sorted(r for a, r in parts.values() if a == arch and r.split(" [")[0] == recipe)
            colour = colours[recipes.index(recipe) % len(colours)]
            # The legend is shared by the panels: a recipe's name stands for its line in each panel; a
            # configuration told apart by hash is one arch's, so its entry names the arch.
            ax.plot(g.step, g["mean"] * 100, color=colour, ls=STYLES[same.index(rest) % len(STYLES)],
                    label=str(label) if rest != recipe or not rest else recipe, marker="." if len(g) < 30 else None)
            band = g[g.n >= 2]
            if len(band):
                ax.fill_between(band.step, (band["mean"] - band["std"]) * 100, (band["mean"] + band["std"]) * 100,
                                color=colour, alpha=0.2)
        ax.set_title(arch)
        ax.set_xlabel("fine-tuning step")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy (%)")
    fig.suptitle(f"{task}: validation accuracy (mean over seeds ± 1 std)")
    fig.tight_layout()
    legend_outside(fig, axes.flat)
    return fig


def curves(task: str, stats: pd.DataFrame, path: Path) -> Path:
    """curves_figure, written to `path`."""
    return save(curves_figure(task, stats), path)


def axis_x(ax, key: str, values: list) -> np.ndarray:
    """x positions of axis values: the numbers themselves (log scale when all > 0 and spanning >= 10x),
    else evenly spaced categories labelled with the values."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        x = np.array(values, dtype=float)
        if len(x) > 1 and x.min() > 0 and x.max() / x.min() >= 10:
            ax.set_xscale("log")
        ax.set_xticks(x, [str(v) for v in values])
        ax.minorticks_off()
    else:
        x = np.arange(len(values), dtype=float)
        ax.set_xticks(x, [str(v) for v in values])
    ax.set_xlabel(key)
    ax.grid(alpha=0.3)
    return x


def line_with_band(ax, x, found: list, label: str, **style) -> None:
    """found: (mean, (lo, hi) or None) or None per x; a line through the present means (in %), and a
    band where the CIs are."""
    idx = [i for i, f in enumerate(found) if f is not None]
    if not idx:
        return
    line, = ax.plot(x[idx], [100 * found[i][0] for i in idx], marker="o", label=label, **style)
    band = [i for i in idx if found[i][1] is not None]
    if band:
        ax.fill_between(x[band], [100 * found[i][1][0] for i in band], [100 * found[i][1][1] for i in band],
                        color=line.get_color(), alpha=0.15)



def axis_accuracy(task: str, key: str, values: list, along: list, order_free: list, path: Path) -> Path:
    """Test accuracy vs axis value: one colour per arch, one line style per recipe, 95% CI bands, and the
    order-free baseline (dashed grey). along: {recipe: {arch: stats.Point}} per value; order_free: its
    test accuracy (or None) per value."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    x = axis_x(ax, key, values)
    archs = sorted({a for r in along for archs in r.values() for a in archs})
    recipes = recipe_order(r for rec in along for r in rec)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arch in enumerate(archs):
        for j, recipe in enumerate(recipes):
            found = [(p.mean, stats.ci(p.boot, p.n)) if (p := rec.get(recipe, {}).get(arch)) else None
                     for rec in along]
            line_with_band(ax, x, found, f"{arch} / {recipe}", color=colours[i % len(colours)],
                           ls=STYLES[j % len(STYLES)])
    line_with_band(ax, x, [None if v is None else (v, None) for v in order_free], "order-free baseline (test)",
                   color="0.5", ls="--")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{task}: accuracy along {key}")
    fig.tight_layout()
    legend_outside(fig, [ax])
    return save(fig, path)


def axis_effects(task: str, key: str, values: list, effects: list, path: Path) -> Path:
    """Two panels vs axis value: gap closed by SPT (%), and SPT's gain per arch over each base recipe
    (solid: supervised, dashed: the compute-matched one), 95% CI bands. effects: axis.effects per value."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = axis_x(left, key, values)
    axis_x(right, key, values)
    closed = [(e["closed"]["value"], e["closed"]["ci"]) if e["closed"]["value"] is not None else None for e in effects]
    line_with_band(left, x, closed, "gap closed", color="k")
    left.set_ylabel("gap closed by spt (%)")
    left.set_title(f"{task}: gap closed")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bases = recipe_order(b for e in effects for b in e["gains"])
    archs = sorted({a for e in effects for g in e["gains"].values() for a in g})
    for i, arch in enumerate(archs):
        for j, base in enumerate(bases):
            found = [(g["gain"], g["ci"]) if (g := e["gains"].get(base, {}).get(arch)) else None for e in effects]
            line_with_band(right, x, found, f"{arch}: spt − {base}", color=colours[i % len(colours)],
                           ls=STYLES[j % len(STYLES)])
    for ax in (left, right):
        ax.axhline(0, color="0.5", lw=0.8)
    right.set_ylabel("gain (points)")
    right.set_title(f"{task}: spt gain per architecture")
    fig.tight_layout()
    legend_outside(fig, [left, right])
    return save(fig, path)
