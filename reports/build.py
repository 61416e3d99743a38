"""Assemble a report from a folder of runs: report.md, report.html (figures embedded), results.csv
(one row per run), cells.csv (one row per configuration), curves.csv (the validation curves: mean,
std and n over seeds per step), axis.csv (the numbers along study axes, when a task has one), locality.csv
(the locality probes per cell, stage and measure, when runs carry them), selection.csv (the configurations
compared on validation, when there are search keys: reports/select.py) and the figures as PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from reports import axis as study
from reports import figures, locality, select, stats
from reports.load import BASELINES, STAGES, STOPPING_COLUMNS, flat, load_config, load_curves, load_runs, usable
from reports.render import Table, interval, pct, signed, to_html, to_markdown

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: os.umask can only be read by setting it
BASE, TREAT, MATCHED = stats.BASE, stats.TREAT, stats.MATCHED


class NoRuns(ValueError):
    """The folder holds no run at all."""


def atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; a report is meant to be shared
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def show(v) -> str:
    """A value read from a file for a table cell: missing -> '?', 3.0 -> '3' (pandas turns ints with
    gaps into floats)."""
    if v is None or (isinstance(v, float) and v != v):
        return "?"
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def config_difference(paths: list[str]) -> str:
    """'finetune.lr: 0.001 | 0.0003' for the settings (seeds aside) that differ between runs' configs."""
    configs = [flat(load_config(p)) for p in paths]
    keys = sorted({k for c in configs for k in c} - {"seed", "pretrain.seed", "search"})
    diff = [f"{k}: {' | '.join(str(c.get(k, '<unset>')) for c in configs)}"
            for k in keys if len({repr(c.get(k, '<unset>')) for c in configs}) > 1]
    if not diff:
        return "the stored configs show no difference (older result files, or a setting outside the config)"
    return "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")


def gap_section(recipes: dict, ambiguous_note: str | None) -> list:
    """Gap tables for one task (or the average): best − worst per recipe, and each arch − best."""
    blocks, gaps = [], {}
    rows = []
    for recipe in sorted(recipes):
        g = stats.gap(recipes[recipe])
        gaps[recipe] = g
        if g is None:
            rows.append([recipe, ", ".join(sorted(recipes[recipe])), "–", "–", "n/a (needs >= 2 architectures)", "–"])
        else:
            rows.append([recipe, ", ".join(sorted(recipes[recipe])), g["best"], g["worst"], pct(g["gap"]),
                         interval(g["gap_ci"])])
    blocks.append(("table", Table(["recipe", "architectures", "best", "worst", "gap (best − worst)", "95% CI"], rows)))
    archs = sorted({a for r in recipes.values() for a in r})
    ordered = sorted(recipes)
    vs = []
    for arch in archs:
        row = [arch]
        for recipe in ordered:
            g = gaps[recipe]
            if g is None or arch not in g["vs_best"]:
                row.append("–")
            elif arch == g["best"]:
                row.append("0.00 (best)")
            else:
                d, lo_hi = g["vs_best"][arch]
                row.append(f"{signed(d)} {interval(lo_hi, signed)}")
        vs.append(row)
    if any(g is not None for g in gaps.values()):
        blocks += [("p", "Each architecture − the best one under the same recipe (points, 95% CI):"),
                   ("table", Table(["arch", *ordered], vs))]
    if ambiguous_note:
        blocks.append(("p", ambiguous_note))
    return blocks, gaps


def closed_row(label: str, recipes: dict) -> list:
    c = stats.gap_closed(recipes, BASE, TREAT)
    if c["value"] is None:
        gaps = [pct(c.get("gap_base")), pct(c.get("gap_treat"))] if "gap_base" in c else ["–", "–"]
        return [label, ", ".join(c["archs"]) or "–", *gaps, "undefined", "–", c["why"]]
    note = []
    if c["left_out"]:
        note.append(f"left out (one recipe only): {', '.join(c['left_out'])}")
    if c["undefined_resamples"]:
        note.append(f"{c['undefined_resamples']} resamples with gap({BASE}) = 0 left out of the CI")
    return [label, ", ".join(c["archs"]), pct(c["gap_base"]), pct(c["gap_treat"]), pct(c["value"]),
            interval(c["ci"]), "; ".join(note) or "–"]


CLOSED_COLUMNS = ["task", "architectures", f"gap {BASE}", f"gap {TREAT}", "gap closed (%)", "95% CI", "note"]


def gain_table(recipes: dict, compute: dict | None = None, test: bool = True, base_name: str = BASE) -> Table | None:
    """TREAT − base_name per arch that ran both (None when none did)."""
    base, treat = recipes.get(base_name, {}), recipes.get(TREAT, {})
    archs = sorted(set(base) & set(treat))
    if not archs:
        return None
    rows = []
    for arch in archs:
        g = stats.gain(base[arch], treat[arch])
        row = [arch, pct(base[arch].mean), pct(treat[arch].mean), signed(g["gain"]), interval(g["ci"], signed)]
        if test:
            if g["p"] is None:
                row += ["–", f"n/a ({g['why']})", "n/a"]
            else:
                row += [f"{g['t']:.3f}", f"{g['p']:.3g}", "yes" if g["significant"] else "no"]
        if compute is not None:
            row.append(f"{compute.get((arch, base_name), '?')} → {compute.get((arch, TREAT), '?')}")
        rows.append(row)
    cols = ["arch", base_name, TREAT, "gain", "95% CI"]
    if test:
        cols += ["Welch t", "p", "significant at 0.05"]
    if compute is not None:
        cols.append(f"wall time s ({base_name} → {TREAT})")
    return Table(cols, rows)


ACCURACY_COLUMNS = ["arch", "recipe", "config", "n", "seeds", "mean", "std", "95% CI", "val mean", "params",
                    "pretrain steps", "finetune steps", "wall time s", "device", "impl"]
# Of an earlier report in the same folder.
OUTPUTS = ("accuracy.png", "gap.png", "curves_*.png", "curves.csv", "axis.csv", "axis_*.png", "locality.csv",
           "locality_*.png", "selection.csv")
FLOOR_COLUMNS = {"majority_val_acc": "majority val", "majority_test_acc": "majority test",
                 "order_free_val_acc": "order-free val", "order_free_test_acc": "order-free test",
                 "unigram_val_acc": "unigram masked-token val"}
NOT_ABOVE_ORDER_FREE = "no — not above the order-free baseline ({}): this model has not learned beyond token counts"
NOT_ABOVE_UNIGRAM = ("no — not above the unigram floor ({}): pretraining has not learned beyond predicting the most "
                     "frequent token")


def seconds(x) -> str:
    return "–" if pd.isna(x) else f"{x:.1f}"


def intro(runs: pd.DataFrame, ok, repeated, bad, table, n_boot: int, seed: int, where: str,
          unselected: int | None = None) -> list:
    blocks = [("h1", "sptbench report"),
              ("p", f"Runs read from {where}. Accuracies are test accuracy in %, gaps and gains in percentage "
               f"points. Spread: sample std over seeds; 95% CI: percentile bootstrap over seeds ({n_boot} resamples, "
               f"seed {seed}). A cell with one seed has no spread and no CI. Budget: params = parameters of the "
               "fine-tuned model (encoder, backbone, head); wall time = result.json's wall_time_s.total, mean over "
               "seeds: stages, probes and overheads over all of a run's attempts (a pretraining reused from the "
               "cache counts what it cost when it ran; runs recorded before overheads were counted: their stages "
               "only); config = the configuration hash "
               "without the seed (runs are only averaged within one).")]
    summary = (f"{len(runs)} runs: {len(ok)} counted, "
               + (f"{unselected} in configurations not selected on validation (see Hyperparameter selection), "
                  if unselected is not None else "")
               + f"{len(repeated)} repeating a configuration already counted, {len(bad)} not ok and excluded from "
               "means")
    counts = bad.status.value_counts().to_dict()
    if counts:
        summary += " (" + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ")"
    blocks += [("h2", "Runs"), ("p", summary + ".")]
    few = table[table.n.between(2, 4)] if not table.empty else table
    if len(few):
        blocks.append(("p", f"{len(few)} of {len(table)} configurations have 2–4 seeds: a bootstrap over so few seeds "
                       "can only recombine the values seen, so its intervals are too narrow; read them as a lower "
                       "bound on the uncertainty and add seeds where a conclusion depends on them."))
    return blocks


def warnings_for(ok: pd.DataFrame, ambiguous: list, along: list = ()) -> list[str]:
    """What could mislead a reader: unpooled configurations (`along`: (task, axis key, value, arch, recipe,
    groups) for those at one axis value), pooled code versions, mixed kernels/devices."""
    warnings = []
    for task, where, arch, recipe, groups in [(t, "", a, r, gs) for t, a, r, gs in ambiguous] + \
            [(t, f" at {k}={v}", a, r, gs) for t, k, v, a, r, gs in along]:
        paths = [ok[(ok.task == task) & (ok.arch == arch) & (ok.recipe == recipe) & (ok.group_hash == g)].path.iloc[0]
                 for g in groups]
        warnings.append(f"{task} / {arch} / {recipe}{where} has {len(groups)} configurations "
                        f"({', '.join(g[:8] for g in groups)}), reported apart and left out of gaps and gains: "
                        f"{config_difference(paths)}")
    for (task, arch, recipe, group), g in ok.groupby(["task", "arch", "recipe", "group_hash"], sort=True):
        versions = sorted(g.code_version.map(show).unique())
        if len(versions) > 1:
            warnings.append(f"{task} / {arch} / {recipe} [{group[:8]}] pools runs of several code versions "
                            f"({', '.join(versions)}): same configuration, but the code changed in between")
    for (task, arch), g in ok.groupby(["task", "arch"], sort=True):
        impls = ", ".join(f"{k}: {v} run(s)" for k, v in g.impl.map(show).value_counts().sort_index().items())
        if g.impl.map(show).nunique() > 1:
            warnings.append(f"{task} / {arch} mixes implementations ({impls}): its numbers and timings combine "
                            "different kernels")
        devices = ", ".join(f"{k}: {v} run(s)" for k, v in g.device.map(show).value_counts().sort_index().items())
        if g.device.map(show).nunique() > 1:
            warnings.append(f"{task} / {arch} ran on several devices ({devices}): compute times are not comparable, "
                            "and a different precision can change accuracy")
    return warnings


def floor_text(values: list[float]) -> str:
    """One floor for a table: its value, a range where runs disagree, '–' where none recorded it."""
    if not values:
        return "–"
    return pct(values[0]) if len(values) == 1 else f"{pct(values[0])}–{pct(values[-1])} (varies, see Warnings)"


def floor_warnings(label: str, found: dict) -> list[str]:
    differ = [f"{col}: {', '.join(pct(v) for v in vals)}" for col, vals in found.items() if len(vals) > 1]
    return [f"{label}: runs disagree on their baselines ({'; '.join(differ)}), so they did not see the same data; "
            "each cell is compared with its own"] if differ else []


def floors_blocks(scopes: list, first: str) -> list:
    """The floors of one task, per scope (label, its runs): the task, or each value of its study axis."""
    rows = []
    for label, runs in scopes:
        found = stats.floors(runs)
        have = int(runs[list(BASELINES)].notna().any(axis=1).sum())
        rows.append([label, f"{have} of {len(runs)}", stats.distinct(runs.baseline_n.dropna()) or "–",
                     *(floor_text(found[col]) for col in FLOOR_COLUMNS)])
    return [("h3", "Floors"),
            ("p", "Reference accuracies the runs computed from their own data (`baselines` in result.json; – where "
             "results predate them): the majority class (always predicting the train split's most frequent "
             "label), and an order-free classifier on token counts (bag of tokens). A model not above the "
             "order-free one shows no use of token order. The unigram floor is the masked-token accuracy of always "
             "predicting the most frequent train token, the floor for spt's pretraining."),
            ("table", Table([first, "runs with baselines", "n train/val/test", *FLOOR_COLUMNS.values()], rows))]


def flag(lo, mean, n: int, floor, no: str) -> str:
    verdict = stats.above(lo, mean, n, floor)
    if verdict is None:
        return "–"
    return ("yes" if n > 1 else "yes (1 seed: its mean)") if verdict else no.format(pct(floor))


def accuracy_blocks(t_cells: pd.DataFrame, key: str | None, place: dict) -> list:
    """The accuracy table (flagged against the order-free floor) and spt's pretraining against the unigram
    floor. place: group_hash -> axis value text (key set)."""
    rows, pre_rows, below, compared = [], [], [], 0
    for r in t_cells.sort_values(["arch", "recipe", "group_hash"]).itertuples():
        spread = r.n > 1  # pandas stores a missing std/CI as NaN: decide by n, not by the value
        verdict = flag(r.ci_lo, r.mean, r.n, r.order_free_test_acc, NOT_ABOVE_ORDER_FREE)
        compared += verdict != "–"
        if verdict.startswith("no"):
            below.append(f"{r.arch}/{r.recipe}" + (f" at {key}={place[r.group_hash]}" if key else ""))
        rows.append([r.arch, r.recipe, r.group_hash[:8], r.n, ", ".join(map(str, r.seeds)), pct(r.mean),
                     pct(r.std) if spread else "n/a (1 seed)", interval((r.ci_lo, r.ci_hi) if spread else None),
                     "–" if pd.isna(r.val_acc_mean) else pct(r.val_acc_mean), r.params, r.pretrain_steps,
                     r.finetune_steps, seconds(r.compute_s), r.device, r.impl, verdict,
                     *([place[r.group_hash]] if key else [])])
        if r.pretrain_n:
            pre_ci = (r.pretrain_ci_lo, r.pretrain_ci_hi) if r.pretrain_n > 1 else None
            pre_rows.append([r.arch, r.recipe, r.group_hash[:8], *([place[r.group_hash]] if key else []),
                             r.pretrain_n, pct(r.pretrain_val_acc_mean), interval(pre_ci),
                             "–" if pd.isna(r.unigram_val_acc) else pct(r.unigram_val_acc),
                             flag(r.pretrain_ci_lo, r.pretrain_val_acc_mean, r.pretrain_n, r.unigram_val_acc,
                                  NOT_ABOVE_UNIGRAM)])
    if not compared:
        line = ("No order-free baseline in these results (written before runs recorded `baselines`): accuracies "
                "are not compared with a floor.")
    else:
        line = (f"{len(below)} of {compared} cells with a baseline are not above the order-free baseline (their 95% "
                "CI lower bound, with one seed their mean, does not exceed its test accuracy)"
                + (f": {', '.join(below)}." if below else "."))
    blocks = [("h3", "Accuracy: arch × recipe"), ("p", line),
              ("table", Table([*ACCURACY_COLUMNS, "above order-free?", *([key] if key else [])], rows))]
    if pre_rows:
        blocks += [("p", f"{TREAT} pretraining: masked-token accuracy on val (metrics.pretrain_val_acc, mean over "
                    "seeds) next to the unigram floor, flagged the same way:"),
                   ("table", Table(["arch", "recipe", "config", *([key] if key else []), "n", "pretrain masked acc",
                                    "95% CI", "unigram floor", "above unigram?"], pre_rows))]
    return blocks


def task_blocks(task: str, t_cells: pd.DataFrame, recipes: dict, several: set, t_ok: pd.DataFrame) -> tuple[list, dict]:
    """Floors, accuracy table, gaps and SPT gains of one task without a study axis. -> (blocks, {recipe: gap})."""
    blocks = [("h2", f"Task: {task}"), *floors_blocks([(task, t_ok)], "task"), *accuracy_blocks(t_cells, None, {}),
              ("h3", "Gap between architectures")]
    apart = sorted(f"{a}/{r}" for t, a, r in several if t == task)
    note = f"Left out of the comparisons (several configurations, see Warnings): {', '.join(apart)}." if apart else None
    gap_blocks, gaps = gap_section(recipes, note)
    blocks += gap_blocks
    compute = {(r.arch, r.recipe): seconds(r.compute_s) for r in t_cells.itertuples()
               if (task, r.arch, r.recipe) not in several}
    gains = gain_table(recipes, compute)
    if gains:
        blocks += [("h3", f"{TREAT} gain per architecture"),
                   ("p", f"gain = mean({TREAT}) − mean({BASE}); Welch's t-test over seeds (scipy, unequal variances), "
                    "two-sided, one test per architecture with no correction for testing several."),
                   ("table", gains)]
    matched = gain_table(recipes, compute, base_name=MATCHED)
    if matched:
        blocks += [("h3", f"{TREAT} vs {MATCHED} (compute-matched)"),
                   ("p", f"{MATCHED} trains from scratch for as many optimizer steps as {TREAT}'s pretraining and "
                    f"fine-tuning together: gain = mean({TREAT}) − mean({MATCHED}) is what pretraining adds beyond "
                    "the extra steps. Welch's t-test as above."),
                   ("table", matched)]
    return blocks, gaps


def along_table(values: list, rows: list, first: list, block: list) -> Table:
    """rows: (first cells, [cells of `block` per axis value]) -> one table, a column block per value."""
    return Table([*first, *(f"{v}: {c}" for v in values for c in block)],
                 [[*head, *(c for per in cells for c in per)] for head, cells in rows])


def gain_cells(g: dict | None) -> list:
    if g is None:
        return ["–", "–", "–"]
    return [signed(g["gain"]), interval(g["ci"], signed), "n/a" if g["p"] is None else f"{g['p']:.3g}"]


def axis_blocks(task: str, key: str, how: str, values: list, along: list, effects: list, note: str | None) -> list:
    """The comparisons along a task's study axis: one table per quantity, a column block per axis value."""
    shown = [show(v) for v in values]
    combos = sorted({(a, r) for recipes in along for r, archs in recipes.items() for a in archs},
                    key=lambda ar: (ar[0], figures.recipe_rank(ar[1])))

    def acc(recipes, arch, recipe):
        p = recipes.get(recipe, {}).get(arch)
        return ["–", "–", "–"] if p is None else [pct(p.mean), interval(stats.ci(p.boot, p.n)), p.n]

    def gap_cells(g):
        return ["n/a (< 2 archs)", "–"] if g is None else [pct(g["gap"]), interval(g["gap_ci"])]

    blocks = [("h3", f"Along the study axis {key}"),
              ("p", f"{how} Values: {', '.join(shown)}. Each value's cells are compared as a task's are: mean test "
               "accuracy, 95% bootstrap CI, n seeds." + (f" {note}" if note else "")),
              ("table", along_table(shown, [([a, r], [acc(rec, a, r) for rec in along]) for a, r in combos],
                                    ["arch", "recipe"], ["mean", "95% CI", "n"])),
              ("p", "Gap between architectures (best − worst mean) per recipe:"),
              ("table", along_table(shown, [([r], [gap_cells(e["gaps"].get(r)) for e in effects])
                                            for r in figures.recipe_order(r for e in effects for r in e["gaps"])],
                                    ["recipe"], ["gap", "95% CI"])),
              ("p", f"Gap closed by {TREAT} at each value (as in the table of all tasks):"),
              ("table", Table([key, *CLOSED_COLUMNS[1:]], [closed_row(v, rec) for v, rec in zip(shown, along)]))]
    for base in (BASE, MATCHED):
        archs = sorted({a for e in effects for a in e["gains"].get(base, {})})
        if not archs:
            continue
        blocks += [("p", f"{TREAT} − {base} per architecture" + (" (compute-matched)" if base == MATCHED else "")
                    + " (gain, 95% CI, Welch's p):"),
                   ("table", along_table(shown, [([a], [gain_cells(e["gains"].get(base, {}).get(a)) for e in effects])
                                                       for a in archs],
                                         ["arch"], ["gain", "95% CI", "p"]))]
    return blocks


def average_blocks(average: dict, left_out: list) -> list:
    blocks = [("h2", "Average over tasks"),
              ("p", "Unweighted mean over tasks of each architecture × recipe mean, for those present in every task"
               + (f" (left out: {'; '.join(left_out)})" if left_out else "") + ". CIs average the per-task "
               "resamples; no t-test, since seeds are not paired across tasks."),
              ("table", Table(["arch", "recipe", "mean", "95% CI", "fewest seeds"],
                              [[a, r, pct(p.mean), interval(stats.ci(p.boot, p.n)), p.n]
                               for a, r, p in sorted((a, r, p) for r in average for a, p in average[r].items())]))]
    blocks += gap_section(average, None)[0]
    gains = gain_table(average, test=False)
    if gains:
        blocks += [("p", f"Average {TREAT} gain:"), ("table", gains)]
    return blocks


def curve_summary(task: str, runs: pd.DataFrame, several: set) -> pd.DataFrame | None:
    """Validation curves of one task's counted runs, summarised over seeds (figures.curve_stats)."""
    curve = load_curves(runs.path)
    if curve.empty:
        return None
    label = {p: f"{a}/{r}" + (f" [{g[:6]}]" if (task, a, r) in several else "")
             for p, a, r, g in zip(runs.path, runs.arch, runs.recipe, runs.group_hash)}
    return figures.curve_stats(curve.assign(label=curve.path.map(label))).assign(task=task)


def not_counted(bad: pd.DataFrame, runs_dir: Path) -> list:
    def where(p: str) -> str:
        return str(Path(p).relative_to(runs_dir)) if Path(p).is_relative_to(runs_dir) else p

    return [("h2", "Runs not counted"),
            ("table", Table(["path", "task", "arch", "recipe", "seed", "status", "reason"],
                            [[where(r.path), *map(show, (r.task, r.arch, r.recipe, r.seed, r.status, r.reason))]
                             for r in bad.astype(object).itertuples()]))]


def write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_text(path, df.to_csv(index=False))


def study_axis(task: str, key: str, declared: bool, t_ok: pd.DataFrame, cells: dict) -> dict:
    """Everything the report shows along one task's axis: values, where each cell stands, per value its
    points, comparisons (study.effects), floors and runs; `ambiguous` as warnings_for's `along`."""
    values, value_of = study.layout(t_ok, key)
    along, ambiguous = study.points_along(cells, task, values, value_of)
    runs_at = [t_ok[study.at(value_of, t_ok.group_hash, v)] for v in values]
    place = {g: "every value" if v is study.EVERYWHERE else show(v) for g, v in value_of.items()}
    everywhere = sorted(f"{a}/{r}" for (t, a, r, g) in cells if t == task and value_of.get(g) is study.EVERYWHERE)
    note = (f"{', '.join(everywhere)}: the same configuration at every value ({key} is not part of it), so shown at "
            "each." if everywhere else None)
    how = (f"Declared with `--axis {key}`." if declared else
           f"Detected: the one setting (seeds, arch.* and recipe.* aside) that differs between {task}'s "
           "configurations within at least two architecture × recipe pairs; `--axis KEY` declares another.")
    return {"key": key, "values": values, "value_of": value_of, "along": along, "runs_at": runs_at,
            "effects": [study.effects(r) for r in along], "place": place, "note": note, "how": how,
            "ambiguous": [(task, key, show(v), a, r, gs) for v, a, r, gs in ambiguous]}


STAGE_NAMES = {"finetune": "fine-tuning", "pretrain": "pretraining"}


def spread(values: pd.Series, digits: int = 0) -> str:
    """'812 (700–900)': mean and range over seeds ('812' when they agree, '–' when none recorded it)."""
    if values.empty:
        return "–"
    lo, hi = values.min(), values.max()
    return f"{values.mean():.{digits}f}" + (f" ({lo:.{digits}f}–{hi:.{digits}f})" if lo != hi else "")


def stage_cells(g: pd.DataFrame, stage: str) -> tuple[dict, list, list]:
    """One stage of one cell's seeds `g`: -> (cells.csv columns, table cells, seeds stopped at the cap while
    still improving)."""
    have = g[g[f"{stage}_stop"].notna()]
    number = {c: have[f"{stage}_{c}"].dropna().astype(float) for c in ("stop", "best_step", "epochs")}
    reasons = have[f"{stage}_reason"].value_counts()
    late = g[g[f"{stage}_converged"].map(lambda v: v is False)].seed.tolist()
    cap = stats.distinct(have[f"{stage}_cap"])
    csv = {f"{stage}_n": len(have), f"{stage}_stop_mean": number["stop"].mean(),
           f"{stage}_stop_min": number["stop"].min(), f"{stage}_stop_max": number["stop"].max(), f"{stage}_cap": cap,
           f"{stage}_epochs_mean": number["epochs"].mean(), f"{stage}_best_step_mean": number["best_step"].mean(),
           f"{stage}_by_patience": int(reasons.get("patience", 0)), f"{stage}_by_cap": int(reasons.get("cap", 0)),
           f"{stage}_not_converged": len(late)}
    cells = [f"{spread(number['stop'])} / {cap}" if len(have) else "–", spread(number["epochs"], 2),
             ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "–", spread(number["best_step"])]
    return csv, cells, late


def convergence(ok: pd.DataFrame, table: pd.DataFrame, place: dict) -> tuple[pd.DataFrame, list, list[str]]:
    """Where each counted cell's stages stopped (result.json `stopping`, load.STOPPING_COLUMNS): -> (cells.csv
    columns per cell, the Convergence section, warnings). place: (task, group_hash) -> 'key=value' along a
    study axis. A cell is "not converged" when any seed's stage stopped at its cap while still improving,
    "unknown" when a seed did not record whether it did (results from before `stopping`)."""
    rows, lines, flagged = [], [], []
    for r in table.sort_values(["task", "arch", "recipe", "group_hash"]).itertuples():
        g = ok[(ok.task == r.task) & (ok.arch == r.arch) & (ok.recipe == r.recipe) & (ok.group_hash == r.group_hash)]
        g = g.sort_values("seed")
        row, cells, failed = {"task": r.task, "arch": r.arch, "recipe": r.recipe, "group_hash": r.group_hash}, [], []
        # Fine-tuning always runs; pretraining where a seed recorded it (spt).
        stages = [s for s in STAGES if s == "finetune" or g[f"{s}_stop"].notna().any()]
        for stage in STAGES:
            if stage not in stages:
                cells += ["–"] * 4
                continue
            csv, shown, late = stage_cells(g, stage)
            row.update(csv)
            cells += shown
            if late:
                failed.append(f"{STAGE_NAMES[stage]}: seed{'s' if len(late) > 1 else ''} {', '.join(map(show, late))}")
        known = all(g[f"{s}_converged"].map(lambda v: isinstance(v, bool)).all() for s in stages)
        row["converged"] = "no" if failed else "yes" if known else "unknown"
        verdict = f"not converged ({'; '.join(failed)})" if failed else row["converged"]
        where = place.get((r.task, r.group_hash), "–")
        if failed:
            flagged.append(f"{r.task} / {r.arch} / {r.recipe}" + (f" at {where}" if where != "–" else "")
                           + f" ({'; '.join(failed)})")
        pre = [pct(r.pretrain_val_acc_mean) if r.pretrain_n else "–",
               pct(r.unigram_val_acc) if r.pretrain_n and pd.notna(r.unigram_val_acc) else "–"]
        lines.append([r.task, where, r.arch, r.recipe, r.group_hash[:8], f"{g.finetune_stop.notna().sum()} of {len(g)}",
                      *cells, *pre, verdict])
        rows.append(row)
    blocks = [("h2", "Convergence"),
              ("p", "Where each stage stopped (result.json `stopping`), mean over seeds with the range in brackets: "
               "steps taken / the stage's step cap, epochs, how many seeds stopped by patience (no better validation "
               "in `patience` validations) or at the cap, and the step of the best validation, whose checkpoint is "
               "the one evaluated. A cell is not converged when any seed's stage stopped at its cap while still "
               "improving (its best validation within the last `patience` validations; without patience, at the "
               "last one): more steps could change its numbers; unknown when a seed did not record it. Pretraining "
               "(spt) also shows its masked-token (pixel) validation accuracy against the unigram floor."),
              ("table", Table(["task", "axis value", "arch", "recipe", "config", "seeds recorded",
                               *(f"{s} {c}" for s in ("fine-tune", "pretrain")
                                 for c in ("stop / cap", "epochs", "stopped by", "best step")),
                               "pretrain masked val acc", "unigram floor", "converged?"], lines))]
    warnings = [("Not converged: a stage stopped at its step cap while its validation was still improving, so more "
                 f"steps could change these cells' numbers: {', '.join(flagged)}")] if flagged else []
    return pd.DataFrame(rows), blocks, warnings


def single_floor(runs: pd.DataFrame, col: str) -> float | None:
    found = stats.floors(runs)[col]
    return found[0] if len(found) == 1 else None


def build(runs_dir: str | Path, out_dir: str | Path, n_boot: int = 10_000, seed: int = 0,
          command: str | None = None, axis: str | None = None, search: list[str] | None = None) -> dict:
    """Write the report for runs_dir into out_dir; return counts and the paths written. axis: a config key
    declared as the study axis (study.detect; AxisError when no task varies in it), else auto-detected.
    search: the search keys (select.search_keys; SearchError for a key no run has), else the runs' stored
    ones; each grid of them is reduced to its configuration chosen on validation before anything is computed."""
    runs_dir, out = Path(runs_dir), Path(out_dir)
    runs = load_runs(runs_dir)
    if runs.empty:
        raise NoRuns(f"no runs (result.json or run folders) under {runs_dir}; run `python run.py ...` first")
    ok, repeated = usable(runs)
    # Before writing anything: a bad --axis or --search leaves the folder as it was.
    keys = select.search_keys(ok, search, axis)
    axes, axis_notes = study.detect(ok, axis, keys)
    unselected, selection, select_notes = None, None, []
    if keys:  # from here on the configurations not chosen on validation are as if they had not run
        keep, selection, select_notes = select.choose(ok, pd.concat([ok, repeated]), keys, axes)
        kept, kept_again = select.within(ok, keep), select.within(repeated, keep)
        left = pd.concat([ok[~kept], repeated[~kept_again]])
        ok, repeated, unselected = ok[kept], repeated[kept_again], len(left)
        dropped, counted = set(left.path), set(ok.path) | set(repeated.path)
        runs = runs.assign(selected=runs.path.map(lambda p: False if p in dropped else True if p in counted else None))
    if not runs[STOPPING_COLUMNS].notna().any().any():  # results.csv as before `stopping` existed
        runs = runs.drop(columns=STOPPING_COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OUTPUTS:  # a figure of a task no longer in the folder must not linger beside the report
        for old in out.glob(pattern):
            old.unlink()
    cells = stats.make_cells(ok, n_boot, seed)
    table = stats.cell_table(ok, cells, seed)
    by_task, ambiguous = stats.points(cells)
    several = {(t, a, r) for t, a, r, _ in ambiguous}  # curve labels: configurations told apart by hash
    # A task with a study axis is compared per axis value instead, not as one set of cells.
    by_task = {t: v for t, v in by_task.items() if t not in axes}
    ambiguous = [a for a in ambiguous if a[0] not in axes]
    studies = {t: study_axis(t, k, axis is not None, ok[ok.task == t], cells) for t, k in sorted(axes.items())}
    runs = runs.assign(counted=runs.path.isin(ok.path))
    bad = runs[runs.status != "ok"]

    where = f"{runs_dir}" + (f" by `{command}`" if command else "")
    blocks = intro(runs, ok, repeated, bad, table, n_boot, seed, where, unselected)
    tasks = sorted(table.task.unique()) if not table.empty else []
    warnings = (warnings_for(ok, ambiguous, [a for st in studies.values() for a in st["ambiguous"]]) + axis_notes
                + select_notes)
    stopped = None
    if ok[STOPPING_COLUMNS].notna().any().any():
        place = {(t, g): f"{st['key']}={v}" for t, st in studies.items() for g, v in st["place"].items()}
        stopped, stop_blocks, stop_warnings = convergence(ok, table, place)
        warnings += stop_warnings
    for task in tasks:
        if task in studies:
            st = studies[task]
            for v, r in zip(st["values"], st["runs_at"]):
                warnings += floor_warnings(f"{task} at {st['key']}={show(v)}", stats.floors(r))
        else:
            warnings += floor_warnings(task, stats.floors(ok[ok.task == task]))
    if warnings:
        blocks += [("h2", "Warnings"), ("list", warnings)]
    if selection is not None:
        blocks += select.blocks(selection, keys, search is not None)
    if stopped is not None:
        blocks += stop_blocks

    figs, curves, axis_rows, locality_rows = [], [], [], []
    if not ok.empty:
        plain = [t for t in tasks if t not in studies]
        closed = []
        for t in tasks:
            if t in studies:
                st = studies[t]
                closed += [closed_row(f"{t} ({st['key']}={show(v)})", rec) for v, rec in zip(st["values"], st["along"])]
            else:
                closed.append(closed_row(t, by_task.get(t, {})))
        average, left_out = stats.average_over_tasks(by_task) if len(plain) > 1 else ({}, [])
        if len(plain) > 1:
            closed.append(closed_row("average over tasks", average) if average else
                          ["average over tasks", "–", "–", "–", "undefined", "–", "no arch × recipe in every task"])
        blocks += [("h2", f"Gap closed by {TREAT}"),
                   ("p", f"gap = best − worst mean accuracy among the architectures that ran both {BASE} and {TREAT}; "
                    f"gap closed = 1 − gap({TREAT}) / gap({BASE}). 100% means {TREAT} made the architectures equal; "
                    "negative means it widened the gap. A task with a study axis has a row per axis value."),
                   ("table", Table(CLOSED_COLUMNS, closed))]
        # Reference lines only where a task has one floor: along an axis they differ per value (see its plot).
        lines = {t: {"order-free baseline (test)": single_floor(ok[ok.task == t], "order_free_test_acc"),
                     "majority class (test)": single_floor(ok[ok.task == t], "majority_test_acc")} for t in tasks}
        figs.append((figures.accuracy_bars(table, out, lines, {t: st["place"] for t, st in studies.items()}),
                     "Test accuracy per task, architecture and recipe (error bars: 95% bootstrap CI; dashed and "
                     "dotted lines: the order-free and majority-class baselines)"))
        gaps = {}
        for i, task in enumerate(tasks):
            t_ok = ok[ok.task == task]
            if task in studies:
                st = studies[task]
                blocks += [("h2", f"Task: {task}"),
                           *floors_blocks([(show(v), r) for v, r in zip(st["values"], st["runs_at"])], st["key"]),
                           *accuracy_blocks(table[table.task == task], st["key"], st["place"]),
                           *axis_blocks(task, st["key"], st["how"], st["values"], st["along"], st["effects"],
                                        st["note"])]
                floors = [{col: single_floor(r, col) for col in BASELINES} for r in st["runs_at"]]
                axis_rows += study.csv_rows(task, st["key"], [show(v) for v in st["values"]], st["along"], floors)
                name = f"{figures.safe(task)}_{i}"
                figs += [(figures.axis_accuracy(task, st["key"], st["values"], st["along"],
                                                [f["order_free_test_acc"] for f in floors],
                                                out / f"axis_accuracy_{name}.png"),
                          f"{task}: test accuracy along {st['key']} (bands: 95% CI; dashed grey: order-free baseline)"),
                         (figures.axis_effects(task, st["key"], st["values"], st["effects"],
                                               out / f"axis_effects_{name}.png"),
                          f"{task}: gap closed by {TREAT} and {TREAT}'s gain along {st['key']} (bands: 95% CI)")]
            else:
                task_b, gaps[task] = task_blocks(task, table[table.task == task], by_task.get(task, {}), several,
                                                 t_ok)
                blocks += task_b
            st = studies.get(task)
            loc = locality.section(task, t_ok, cells, out, f"{figures.safe(task)}_{i}", n_boot, seed,
                                   st and (st["key"], [(v, show(v)) for v in st["values"]], st["value_of"]))
            blocks += loc[0]
            figs += loc[1]
            locality_rows += loc[2]
            summary = curve_summary(task, t_ok, several)
            if summary is not None:
                curves.append(summary)
                path = out / f"curves_{figures.safe(task)}_{len(curves) - 1}.png"
                figs.append((figures.curves(task, summary, path), f"{task}: validation accuracy during fine-tuning"))
        if any(g for t in gaps.values() for g in t.values()):
            figs.insert(1, (figures.gap_bars(gaps, out),
                            "Gap between the best and worst architecture under each recipe (error bars: 95% CI)"))
        if average:
            blocks += average_blocks(average, left_out + [f"{t} (it has a study axis)" for t in studies])
        blocks += [("h2", "Figures"), *(("img", (str(p), caption)) for p, caption in figs)]
    if not bad.empty:
        blocks += not_counted(bad, runs_dir)
    if not repeated.empty:
        blocks += [("h2", "Repeated configurations"),
                   ("p", "Same configuration and seed (config_hash) as a run already counted; counted once:"),
                   ("list", sorted(repeated.path))]

    if curves:  # the numbers behind the curve figures
        write_csv(pd.concat(curves)[["task", "label", "step", "mean", "std", "n"]], out / "curves.csv")
    if axis_rows:
        write_csv(pd.DataFrame(axis_rows).astype({"n": "Int64"}), out / "axis.csv")  # n: 3, not 3.0 beside gaps
    if locality_rows:
        write_csv(pd.DataFrame(locality_rows, columns=locality.CSV_COLUMNS), out / "locality.csv")
    write_csv(runs, out / "results.csv")
    if selection is not None:
        write_csv(select.csv_frame(selection), out / "selection.csv")
    write_csv(table if stopped is None or table.empty else table.merge(stopped, how="left",
                                                                          on=["task", "arch", "recipe", "group_hash"]),
              out / "cells.csv")
    atomic_text(out / "report.md", to_markdown(blocks))
    atomic_text(out / "report.html", to_html(blocks, f"sptbench report: {runs_dir}"))
    return {"runs": len(runs), "counted": len(ok), "not_ok": len(bad), "out": out, "figures": [p for p, _ in figs],
            "axes": axes, "search": keys}
