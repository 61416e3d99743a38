"""Study axes: a setting that a task's configurations vary on purpose (e.g. `task.train_fraction`), so
that its cells are laid out along it instead of being left out of comparisons as "several configurations".

A task's axis is the one setting that differs between its runs' stored configs — settings that do not
define a configuration (seeds, where outputs go, how a run computes) aside, and so are arch.* and
recipe.*, which differ between the cells that are compared — and that differs within at least two
(arch, recipe) pairs, so that something can be compared along it: a setting that only differs
between archs or recipes (a per-arch learning rate) is part of what is compared, and one that
differs for a single (arch, recipe) is more likely a leftover than a study; both keep the
"several configurations" treatment. `--axis KEY` declares the axis instead (auto-detection then off);
other settings may then differ too, and cells that still have several configurations at one axis
value stay apart ("ambiguous"). A cell whose runs disagree on the axis key has one group_hash
across values: the key is outside its configuration (pretrain.* for a supervised run), so the cell
stands at every axis value. Search keys (reports/select.py: settings a sweep searched over and the
report chooses on validation) are never an axis and never stop one from being detected.
"""

from __future__ import annotations

import json

import pandas as pd

from reports import stats
from reports.load import flat, load_config

# Settings that never tell configurations apart: seeds (spread, not settings) and the keys the
# training side leaves out of config_hash (recipes/experiment.py NOT_HASHED).
IGNORED = {"seed", "pretrain.seed", "out_root", "cache_dir", "progress", "device", "baselines", "search"}
IGNORED_PREFIXES = ("arch.", "recipe.", "compute.", "logger.")
UNSET = "<unset>"
EVERYWHERE = object()  # value_of for a cell that stands at every axis value


class AxisError(ValueError):
    """--axis names a key that cannot be a study axis of these runs."""


def settings(path: str) -> dict:
    """A run's stored config as {dotted key: hashable value}, without IGNORED keys."""
    cfg = load_config(path)
    out = {}
    for k, v in (flat(cfg) if isinstance(cfg, dict) else {}).items():
        if k in IGNORED or k.startswith(IGNORED_PREFIXES):
            continue
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
    return out


def varying(configs: list[dict]) -> list[str]:
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k, UNSET)) for c in configs}) > 1]


def detect(ok: pd.DataFrame, declared: str | None = None, search: dict | None = None) -> tuple[dict, list[str]]:
    """-> ({task: axis key}, warnings). With `declared`, the axis of every task whose configs vary in it;
    AxisError when it names a seed/arch/recipe/unhashed key, or one that varies in no task. search: {task:
    search keys}, left out as IGNORED keys are (their grid is chosen from, not laid out)."""
    if declared and (declared in IGNORED or declared.startswith(IGNORED_PREFIXES)):
        raise AxisError(f"--axis {declared} cannot be a study axis: seeds, arch.*, recipe.* and settings outside "
                        "the configuration hash are never laid out along an axis")
    configs = {p: settings(p) for p in ok.path}
    axes, notes, seen = {}, [], set()
    for task, g in ok.groupby("task", sort=True):
        skip = set((search or {}).get(task, ()))
        mine = {p: {k: v for k, v in configs[p].items() if k not in skip} for p in g.path}
        keys = varying(list(mine.values()))
        seen |= set(keys)
        if declared:
            if declared in keys:
                axes[task] = declared
            continue
        per_cell = [varying([mine[p] for p in h.path]) for _, h in g.groupby(["arch", "recipe"])]
        within = [k for k in keys if sum(k in v for v in per_cell) >= 2]
        if len(within) == 1:
            axes[task] = within[0]
        elif within:
            notes.append(f"{task}: configurations of several arch × recipe pairs differ in {len(within)} settings "
                         f"({', '.join(within[:6])}), so no study axis was detected; pass --axis KEY to lay "
                         "them out along one")
    if declared and not axes:
        raise AxisError(f"--axis {declared} does not vary between the configurations of any task"
                        + (f" (settings that do: {', '.join(sorted(seen)[:10])})" if seen else
                           " (no setting does, seeds and arch.*/recipe.* aside)"))
    return axes, notes


def sort_values(values) -> list:
    """Numbers in numeric order, anything else (strings, UNSET, mixed) by its text."""
    values = set(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=str)


def layout(ok_task: pd.DataFrame, key: str) -> tuple[list, dict]:
    """-> (sorted axis values, {group_hash: value or EVERYWHERE}) for one task's counted runs."""
    value_of, values = {}, set()
    for group, g in ok_task.groupby("group_hash", sort=True):
        found = {settings(p).get(key, UNSET) for p in g.path}
        values |= found
        value_of[group] = found.pop() if len(found) == 1 else EVERYWHERE
    return sort_values(values), value_of


def at(value_of: dict, groups: pd.Series, value) -> pd.Series:
    """Mask of rows (by their group_hash) that stand at `value`."""
    return groups.map(lambda g: value_of.get(g) is EVERYWHERE or value_of.get(g) == value).astype(bool)


def points_along(cells: dict, task: str, values: list, value_of: dict) -> tuple[list, list]:
    """-> ([{recipe: {arch: Point}} per axis value], [(value, arch, recipe, [groups])] for cells with
    several configurations at one value, left out as stats.points leaves them out)."""
    rekeyed = {}
    for (t, arch, recipe, group), cell in cells.items():
        if t != task or group not in value_of:
            continue
        for i, v in enumerate(values):  # the index, not the value, keys the split: values of mixed types do not sort
            if value_of[group] is EVERYWHERE or value_of[group] == v:
                rekeyed[(i, arch, recipe, group)] = cell
    found, ambiguous = stats.points(rekeyed)
    return [found.get(i, {}) for i in range(len(values))], [(values[i], a, r, gs) for i, a, r, gs in ambiguous]


def effects(recipes: dict) -> dict:
    """The comparisons at one axis value: gap per recipe, gap closed by TREAT, TREAT's gain per arch over
    BASE and over MATCHED (each arch that has both recipes)."""
    treat = recipes.get(stats.TREAT, {})
    return {"gaps": {r: stats.gap(archs) for r, archs in recipes.items()},
            "closed": stats.gap_closed(recipes, stats.BASE, stats.TREAT),
            "gains": {base: {a: stats.gain(recipes[base][a], treat[a]) for a in sorted(set(recipes[base]) & set(treat))}
                      for base in (stats.BASE, stats.MATCHED) if base in recipes}}


def csv_rows(task: str, key: str, values: list, along: list, floors: list) -> list[dict]:
    """axis.csv: one row per (axis value, quantity[, recipe][, arch]). quantity: accuracy, gap (best −
    worst, per recipe), gap_closed, gain_vs_<base recipe> (TREAT − base, per arch; p = Welch),
    and the floors (load.BASELINES names; estimate None when missing or disagreeing). Fractions, not %."""
    rows = []

    def row(v, quantity, recipe="", arch="", estimate=None, interval=None, n=None, p=None):
        rows.append({"task": task, "axis": key, "value": v, "quantity": quantity, "recipe": recipe, "arch": arch,
                     "estimate": estimate, "ci_lo": interval[0] if interval else None,
                     "ci_hi": interval[1] if interval else None, "n": n, "p": p})

    for v, recipes, fl in zip(values, along, floors):
        for recipe in sorted(recipes):
            for arch, pt in sorted(recipes[recipe].items()):
                row(v, "accuracy", recipe, arch, pt.mean, stats.ci(pt.boot, pt.n), pt.n)
        e = effects(recipes)
        for recipe, g in sorted(e["gaps"].items()):
            if g is not None:
                row(v, "gap", recipe, f"{g['best']} − {g['worst']}", g["gap"], g["gap_ci"], g["n"])
        c = e["closed"]
        row(v, "gap_closed", f"{stats.TREAT} vs {stats.BASE}", ", ".join(c["archs"]), c["value"], c["ci"])
        for base, by_arch in e["gains"].items():
            for arch, g in by_arch.items():
                n = min(recipes[base][arch].n, recipes[stats.TREAT][arch].n)
                row(v, f"gain_vs_{base}", stats.TREAT, arch, g["gain"], g["ci"], n, g["p"])
        for col, value in fl.items():
            row(v, col, estimate=value)
    return rows
