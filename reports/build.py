"""Assemble a report from a folder of runs: report.md, report.html (figures embedded), results.csv
(one row per run), cells.csv (one row per configuration), curves.csv (the validation curves: mean,
std and n over seeds per step) and the figures as PNG."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from reports import figures, stats
from reports.load import load_config, load_curves, load_runs, usable
from reports.render import Table, interval, pct, signed, to_html, to_markdown

UMASK = os.umask(0o022)
os.umask(UMASK)  # read once: os.umask can only be read by setting it
BASE, TREAT = "supervised", "spt"  # the comparison the suite is about; other recipes still get tables


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


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_difference(paths: list[str]) -> str:
    """'finetune.lr: 0.001 | 0.0003' for the settings (seeds aside) that differ between runs' configs."""
    configs = [flat(load_config(p)) for p in paths]
    keys = sorted({k for c in configs for k in c} - {"seed", "pretrain.seed"})
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


def gain_table(recipes: dict, compute: dict | None = None, test: bool = True) -> Table | None:
    base, treat = recipes.get(BASE, {}), recipes.get(TREAT, {})
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
            row.append(f"{compute.get((arch, BASE), '?')} → {compute.get((arch, TREAT), '?')}")
        rows.append(row)
    cols = ["arch", BASE, TREAT, "gain", "95% CI"]
    if test:
        cols += ["Welch t", "p", "significant at 0.05"]
    if compute is not None:
        cols.append(f"wall time s ({BASE} → {TREAT})")
    return Table(cols, rows)


ACCURACY_COLUMNS = ["arch", "recipe", "config", "n", "seeds", "mean", "std", "95% CI", "val mean", "params",
                    "pretrain steps", "finetune steps", "wall time s", "device", "impl"]
OUTPUTS = ("accuracy.png", "gap.png", "curves_*.png", "curves.csv")  # of an earlier report in the same folder


def seconds(x) -> str:
    return "–" if pd.isna(x) else f"{x:.1f}"


def intro(runs: pd.DataFrame, ok, repeated, bad, table, n_boot: int, seed: int, where: str) -> list:
    blocks = [("h1", "sptbench report"),
              ("p", f"Runs read from {where}. Accuracies are test accuracy in %, gaps and gains in percentage "
               f"points. Spread: sample std over seeds; 95% CI: percentile bootstrap over seeds ({n_boot} resamples, "
               f"seed {seed}). A cell with one seed has no spread and no CI. Budget: params = parameters of the "
               "fine-tuned model (encoder, backbone, head); wall time = seconds of all stages, mean over seeds (a "
               "pretraining reused from the cache counts what it cost when it ran); config = the configuration hash "
               "without the seed (runs are only averaged within one).")]
    summary = (f"{len(runs)} runs: {len(ok)} counted, {len(repeated)} repeating a configuration already counted, "
               f"{len(bad)} not ok and excluded from means")
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


def warnings_for(ok: pd.DataFrame, ambiguous: list) -> list[str]:
    """What could mislead a reader: unpooled configurations, pooled code versions, mixed kernels/devices."""
    warnings = []
    for task, arch, recipe, groups in ambiguous:
        paths = [ok[(ok.task == task) & (ok.arch == arch) & (ok.recipe == recipe) & (ok.group_hash == g)].path.iloc[0]
                 for g in groups]
        warnings.append(f"{task} / {arch} / {recipe} has {len(groups)} configurations "
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


def task_blocks(task: str, t_cells: pd.DataFrame, recipes: dict, several: set) -> tuple[list, dict]:
    """Accuracy table, gaps and SPT gains of one task. -> (blocks, {recipe: gap result})."""
    rows = []
    for r in t_cells.sort_values(["arch", "recipe", "group_hash"]).itertuples():
        spread = r.n > 1  # pandas stores a missing std/CI as NaN: decide by n, not by the value
        rows.append([r.arch, r.recipe, r.group_hash[:8], r.n, ", ".join(map(str, r.seeds)), pct(r.mean),
                     pct(r.std) if spread else "n/a (1 seed)", interval((r.ci_lo, r.ci_hi) if spread else None),
                     "–" if pd.isna(r.val_acc_mean) else pct(r.val_acc_mean), r.params, r.pretrain_steps,
                     r.finetune_steps, seconds(r.compute_s), r.device, r.impl])
    blocks = [("h2", f"Task: {task}"), ("h3", "Accuracy: arch × recipe"), ("table", Table(ACCURACY_COLUMNS, rows)),
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
    return blocks, gaps


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


def build(runs_dir: str | Path, out_dir: str | Path, n_boot: int = 10_000, seed: int = 0,
          command: str | None = None) -> dict:
    """Write the report for runs_dir into out_dir; return counts and the paths written."""
    runs_dir, out = Path(runs_dir), Path(out_dir)
    runs = load_runs(runs_dir)
    if runs.empty:
        raise NoRuns(f"no runs (result.json or run folders) under {runs_dir}; run `python run.py ...` first")
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OUTPUTS:  # a figure of a task no longer in the folder must not linger beside the report
        for old in out.glob(pattern):
            old.unlink()
    ok, repeated = usable(runs)
    cells = stats.make_cells(ok, n_boot, seed)
    table = stats.cell_table(ok, cells)
    by_task, ambiguous = stats.points(cells)
    several = {(t, a, r) for t, a, r, _ in ambiguous}
    runs = runs.assign(counted=runs.path.isin(ok.path))
    bad = runs[runs.status != "ok"]

    where = f"{runs_dir}" + (f" by `{command}`" if command else "")
    blocks = intro(runs, ok, repeated, bad, table, n_boot, seed, where)
    warnings = warnings_for(ok, ambiguous)
    if warnings:
        blocks += [("h2", "Warnings"), ("list", warnings)]

    figs, curves = [], []
    if not ok.empty:
        tasks = sorted(by_task)
        closed = [closed_row(t, by_task[t]) for t in tasks]
        average, left_out = stats.average_over_tasks(by_task) if len(tasks) > 1 else ({}, [])
        if len(tasks) > 1:
            closed.append(closed_row("average over tasks", average) if average else
                          ["average over tasks", "–", "–", "–", "undefined", "–", "no arch × recipe in every task"])
        blocks += [("h2", f"Gap closed by {TREAT}"),
                   ("p", f"gap = best − worst mean accuracy among the architectures that ran both {BASE} and {TREAT}; "
                    f"gap closed = 1 − gap({TREAT}) / gap({BASE}). 100% means {TREAT} made the architectures equal; "
                    "negative means it widened the gap."),
                   ("table", Table(CLOSED_COLUMNS, closed))]
        figs.append((figures.accuracy_bars(table, out),
                     "Test accuracy per task, architecture and recipe (error bars: 95% bootstrap CI)"))
        gaps = {}
        for task in tasks:
            task_b, gaps[task] = task_blocks(task, table[table.task == task], by_task[task], several)
            blocks += task_b
            summary = curve_summary(task, ok[ok.task == task], several)
            if summary is not None:
                curves.append(summary)
                path = out / f"curves_{figures.safe(task)}_{len(curves) - 1}.png"
                figs.append((figures.curves(task, summary, path), f"{task}: validation accuracy during fine-tuning"))
        if any(g for t in gaps.values() for g in t.values()):
            figs.insert(1, (figures.gap_bars(gaps, out),
                            "Gap between the best and worst architecture under each recipe (error bars: 95% CI)"))
        if average:
            blocks += average_blocks(average, left_out)
        blocks += [("h2", "Figures"), *(("img", (str(p), caption)) for p, caption in figs)]
    if not bad.empty:
        blocks += not_counted(bad, runs_dir)
    if not repeated.empty:
        blocks += [("h2", "Repeated configurations"),
                   ("p", "Same configuration and seed (config_hash) as a run already counted; counted once:"),
                   ("list", sorted(repeated.path))]

    if curves:  # the numbers behind the curve figures
        write_csv(pd.concat(curves)[["task", "label", "step", "mean", "std", "n"]], out / "curves.csv")
    write_csv(runs, out / "results.csv")
    write_csv(table, out / "cells.csv")
    atomic_text(out / "report.md", to_markdown(blocks))
    atomic_text(out / "report.html", to_html(blocks, f"sptbench report: {runs_dir}"))
    return {"runs": len(runs), "counted": len(ok), "not_ok": len(bad), "out": out, "figures": [p for p, _ in figs]}
