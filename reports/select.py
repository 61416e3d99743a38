"""Hyperparameter selection on validation: of the configurations that differ only in the settings a sweep
searched over, the report keeps one per cell, chosen on validation accuracy, and computes every table from
its runs alone (build.build drops the others before anything is computed, as if they had not run).

Search keys are dotted config keys (finetune.lr, pretrain.lr, arch.dropout, ...): those listed in the runs'
stored config `search` (the union over a task's runs, in order of appearance), or those of `--search
K1,K2` (build's `search`), which replace the stored ones for every task. A key that no counted run's
config has is an error, as a bad --axis is. The study axis is never a search key.

A grid is the configurations (group_hash) of one task × arch × recipe at one value of the task's study
axis whose settings differ only in search keys. Settings that differ between runs of one configuration
are outside it and do not count; configurations that differ in another setting are separate grids, each
with its own choice (and the report keeps them apart, as several configurations). A configuration's value
of a search key is read from its runs' stored configs; runs of one configuration that disagree on it show
that the key is not part of it (pretrain.lr for a supervised run): UNUSED, shown as –.

Rule: the configuration with the highest mean validation accuracy (metrics.val_acc, mean over its seeds
that recorded one, compared to 1e-9). Ties: more such seeds; then the smaller value of each search key in
the order declared (numbers numerically, before text; UNUSED and unset last); then the smaller group_hash,
so the choice is deterministic. Test accuracy is never read here. A configuration without a validation
accuracy is never chosen unless it is alone in its grid; a grid none of whose configurations has one keeps
them all (reported apart, with a warning).
"""

from __future__ import annotations

import difflib

import pandas as pd

from reports import axis as study
from reports.load import flat, fraction, load_config
from reports.render import Table, pct

UNUSED = "<unused>"  # runs of one configuration disagree on the key: it is not part of that configuration
NOT_SEARCHABLE = ("arch.name", "recipe.name", "task.name")  # what is compared, not tuned
ROUND = 9  # val means equal to this many digits tie (float sums of the same accuracies can differ in the last bit)
CSV_COLUMNS = ["task", "axis", "value", "arch", "recipe", "group_hash", "n", "val_acc_mean", "val_acc_std",
               "val_acc_per_seed", "selected"]


class SearchError(ValueError):
    """A search key that cannot be one: no run's config has it, or it is not a setting of a configuration."""


def search_keys(ok: pd.DataFrame, declared: list[str] | None, axis: str | None = None) -> dict[str, list[str]]:
    """{task: its search keys, in the order declared} for the tasks that have some. declared: --search
    (replaces the stored `search` lists); axis: a declared study axis, which is never a search key."""
    configs = {p: flat(load_config(p)) for p in ok.path}
    keys = {}
    for task, g in ok.sort_values("path").groupby("task", sort=True):
        stored = [configs[p].get("search") for p in g.path]
        found = declared if declared is not None else [
            k for ks in stored if isinstance(ks, list) for k in ks if isinstance(k, str)]
        keys[task] = [k for k in dict.fromkeys(found) if k != axis]
    where = "--search" if declared is not None else "search key (from the runs' stored config `search`)"
    known = sorted({k for c in configs.values() for k in c})
    for key in dict.fromkeys(k for ks in keys.values() for k in ks):
        if key in study.IGNORED or key.startswith(("compute.", "logger.")) or key in NOT_SEARCHABLE:
            raise SearchError(f"{where} {key} cannot be a search key: seeds, names and settings outside the "
                              "configuration hash are not hyperparameters")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise SearchError(f"{where} {key} is a setting of no counted run's stored config"
                              + (f" (did you mean {close[0]}?)" if close else ""))
    return {t: ks for t, ks in keys.items() if ks}


def text(v) -> str:
    """A search key's or axis value for a table: 1.0 -> '1', UNUSED/unset -> '–'."""
    if v in (UNUSED, study.UNSET):
        return "–"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def order(v) -> tuple:
    """Sort key of a search key's value for the tie rule: numbers numerically, then text, then UNUSED/unset."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (2, 0.0, "") if v in (UNUSED, study.UNSET) else (1, 0.0, str(v))


def rank(info: dict, search: list[str], group: str) -> tuple:
    """The tie rule as a sort key (smallest first): best mean val, more seeds, smaller search keys' values in
    the order declared, group_hash."""
    return (-round(info["mean"], ROUND), -info["n"], *(order(info["values"][k]) for k in search), group)


def values_of(paths, keys: list[str], configs: dict) -> dict:
    """{search key: the configuration's value, or UNUSED where its runs disagree}."""
    out = {}
    for k in keys:
        seen = {repr(configs[p].get(k, study.UNSET)): configs[p].get(k, study.UNSET) for p in paths}
        out[k] = next(iter(seen.values())) if len(seen) == 1 else UNUSED
    return out


def grids(cell: pd.DataFrame, drop: set) -> list[list[str]]:
    """The group hashes of one task × arch × recipe, split by every setting other than `drop` (search keys,
    axis) and those that differ within one configuration."""
    sets = {h: [study.settings(p) for p in g.path] for h, g in cell.groupby("group_hash", sort=True)}
    drop = drop | {k for cfgs in sets.values() for k in study.varying(cfgs)}
    by = {}
    for h, cfgs in sets.items():
        by.setdefault(repr(sorted((k, repr(v)) for k, v in cfgs[0].items() if k not in drop)), []).append(h)
    return list(by.values())


def choose(ok: pd.DataFrame, everyone: pd.DataFrame, keys: dict, axes: dict) -> tuple[set, pd.DataFrame, list[str]]:
    """-> ({(task, arch, recipe, group_hash) kept}, one row per configuration and axis value (CSV_COLUMNS and
    the search keys), warnings). ok: counted runs; everyone: ok runs with repeats, whose stored configs give
    the search keys' values. Tasks without search keys keep every configuration."""
    configs = {p: flat(load_config(p)) for p in everyone[everyone.task.isin(keys)].path}
    all_keys = list(dict.fromkeys(k for t in sorted(keys) for k in keys[t]))
    layouts = {t: study.layout(ok[ok.task == t], k)[1] for t, k in axes.items() if t in keys}
    rows, keep, notes = [], set(), []
    for (task, arch, recipe), cell in ok.groupby(["task", "arch", "recipe"], sort=True):
        if task not in keys:
            keep |= {(task, arch, recipe, h) for h in cell.group_hash}
            continue
        search, key, value_of = keys[task], axes.get(task), layouts.get(task, {})
        for grid in grids(cell, set(search) | {key}):
            info = {}
            for h in grid:
                runs = cell[cell.group_hash == h].sort_values("seed")
                vals = [v for v in map(fraction, runs.val_acc) if v is not None]
                s = pd.Series(vals, dtype=float)
                # Each seed's best val accuracy, to show which seeds a mean stands on: "*" marks one not above
                # the majority class (a run early stopping ended before it learned anything).
                floor = pd.to_numeric(runs.get("majority_val_acc"), errors="coerce").max()
                per_seed = ", ".join(f"{pct(v)}{'*' if pd.notna(floor) and v <= floor else ''}"
                                     for v in map(fraction, runs.val_acc) if v is not None)
                same = everyone[(everyone.task == task) & (everyone.group_hash == h)].path
                info[h] = {"n": len(vals), "mean": s.mean() if vals else None,
                           "std": s.std(ddof=1) if len(vals) > 1 else None, "values": values_of(same, search, configs),
                           "per_seed": per_seed}

            placed = [value_of.get(h) for h in grid]
            if not key or all(v is study.EVERYWHERE for v in placed):
                slots = [(study.EVERYWHERE if key else None, grid)]
            else:  # each axis value has its own choice; a configuration outside the axis competes at every value
                values = study.sort_values({v for v in placed if v is not study.EVERYWHERE})
                slots = [(v, [h for h in grid if value_of[h] is study.EVERYWHERE or value_of[h] == v])
                         for v in values]
            for i, (v, candidates) in enumerate(slots):
                scored = [h for h in candidates if info[h]["n"]]
                best = min(scored, key=lambda h: rank(info[h], search, h)) if scored else None
                chosen = set(candidates) if len(candidates) == 1 or not scored else {best}
                if len(candidates) > 1 and not scored:
                    at = "" if v is None else " at every value" if v is study.EVERYWHERE else f" at {key}={text(v)}"
                    notes.append(f"{task} / {arch} / {recipe}{at}: {len(candidates)} configurations differ in search "
                                 "keys but none recorded a validation accuracy, so none was selected; all are kept")
                keep |= {(task, arch, recipe, h) for h in chosen}
                shown = "" if v is None else "every value" if v is study.EVERYWHERE else text(v)
                for h in candidates:
                    rows.append({"task": task, "axis": key or "", "value": shown, "arch": arch, "recipe": recipe,
                                 "group_hash": h, **info[h]["values"], "n": info[h]["n"],
                                 "val_acc_mean": info[h]["mean"], "val_acc_std": info[h]["std"],
                                 "val_acc_per_seed": info[h]["per_seed"],
                                 "selected": h in chosen and (len(candidates) == 1 or bool(scored)),
                                 "_order": (i, *(order(info[h]["values"][k]) for k in search), h)})
    table = pd.DataFrame(rows, columns=[*CSV_COLUMNS[:6], *all_keys, *CSV_COLUMNS[6:], "_order"])
    return keep, table, notes


def within(runs: pd.DataFrame, keep: set) -> pd.Series:
    """Mask of the runs whose configuration was kept (choose)."""
    cells = runs[["task", "arch", "recipe", "group_hash"]].itertuples(index=False)
    return pd.Series([tuple(c) in keep for c in cells], index=runs.index, dtype=bool)


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by task, arch, recipe, axis value, then the search keys' values: a grid reads as a grid."""
    rows = sorted(range(len(table)), key=lambda i: (*table.iloc[i][["task", "arch", "recipe"]], table._order.iloc[i]))
    return table.iloc[rows]


def csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """selection.csv: one row per configuration (and axis value); validation columns only."""
    return ordered(table).drop(columns="_order")


def blocks(table: pd.DataFrame, keys: dict, declared: bool) -> list:
    """The "Hyperparameter selection" section: the rule, the chosen values, each task's grids."""
    all_keys = list(dict.fromkeys(k for t in sorted(keys) for k in keys[t]))
    table = ordered(table)
    where = ("declared with `--search` (replacing the runs' stored `search`)" if declared else
             "listed in the runs' stored config (`search`)")
    out = [("h2", "Hyperparameter selection"),
           ("p", "Runs of one task × arch × recipe (at one value of a study axis) that differ only in the search "
            f"keys, {where}, are one grid; of each grid the report keeps the configuration with the best mean "
            "validation accuracy over its seeds (metrics.val_acc), and computes every other table from its runs "
            "alone, as if the others had not run. Ties: more seeds with a validation accuracy, then the smaller "
            "value of each search key in the order declared "
            f"({', '.join(f'{t}: ' + ', '.join(ks) for t, ks in sorted(keys.items()))}), then the configuration "
            "hash. Test accuracy is never consulted for the choice, and is not shown for configurations not "
            "selected. – : the key is not part of that configuration (its runs differ in it, e.g. pretrain.lr of a "
            "supervised recipe) or is missing from its config."),
           ("p", "Selected hyperparameters:")]
    out.append(("table", Table(["task", "axis value", "arch", "recipe", *all_keys, "config"],
                               [[r["task"], f"{r['axis']}={r['value']}" if r["axis"] else "–", r["arch"], r["recipe"],
                                 *(text(r[k]) if k in keys[r["task"]] else "not searched" for k in all_keys),
                                 r["group_hash"][:8]]
                                for r in table[table.selected].to_dict("records")])))
    for task, t in table.groupby("task", sort=True):
        key = t.axis.iloc[0]
        rows = []
        for r in t.to_dict("records"):
            val = "–" if r["n"] == 0 else (f"{pct(r['val_acc_mean'])} ± {pct(r['val_acc_std'])}" if r["n"] > 1
                                          else f"{pct(r['val_acc_mean'])} (1 seed)")
            rows.append([r["arch"], r["recipe"], *([r["value"]] if key else []), *(text(r[k]) for k in keys[task]),
                         r["group_hash"][:8], r["n"], val, r["val_acc_per_seed"] or "–",
                         "✓ selected" if r["selected"] else ""])
        out += [("h3", f"{task}: configurations compared on validation"),
                ("table", Table(["arch", "recipe", *([key] if key else []), *keys[task], "config", "n seeds",
                                 "val acc (mean ± std)", "per seed", "chosen"], rows))]
    if table.val_acc_per_seed.str.contains("*", regex=False).any():
        out.append(("p", "* a seed whose best validation accuracy is not above the majority class: its run "
                    "ended (early stopping, or its cap) before it learned anything, and pulls its configuration's "
                    "mean down."))
    return out
