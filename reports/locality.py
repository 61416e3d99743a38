"""Locality: how far each position of a backbone looks, from result.json `probes` (recipes/extras/probes.py),
at each stage (init, pretrained for spt, finetuned), and whether the change in locality that SPT brings
goes with its gain.

Per run and stage the measures are: influence (every backbone) `mean_distance_offdiag` (the headline:
k = 0 holds the residual identity), `mean_distance`, `half_mass_distance`; attention (attention backbones
only) the head mean per layer of `distance`, `entropy` and `local_share`, and their mean over layers
(layer "mean"). A cell (task, arch, recipe, group_hash) and stage gets the mean over the seeds that
carry the measure and a 95% percentile bootstrap CI (stats.boot_means, keyed by
"task|arch|recipe|group_hash|stage|measure|layer", so a report is reproducible). Runs without `probes`
(written before runs recorded them) are counted and left out; a task none of whose runs has probes has
no Locality section.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from recipes.schema import read_result
from reports import axis as study
from reports import figures, stats
from reports.figures import plt
from reports.render import Table

STAGES = ("init", "pretrained", "finetuned")
INFLUENCE = ("mean_distance_offdiag", "mean_distance", "half_mass_distance")
ATTENTION = ("distance", "entropy", "local_share")
HEADLINE, ATTN_HEADLINE = "influence.mean_distance_offdiag", "attention.distance"
CLIP = 40  # influence profiles are drawn for |k| <= CLIP (or the data's largest |k|, when smaller)
CSV_COLUMNS = ["task", "axis", "value", "arch", "recipe", "group_hash", "stage", "measure", "layer", "estimate",
               "ci_lo", "ci_hi", "n"]


def number(v) -> float | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def read(path: str) -> dict | None:
    """A run's `probes` (None when its result.json has none, or an unusable one)."""
    try:
        p = read_result(Path(path) / "result.json").probes
    except (OSError, ValueError):
        return None
    return p if isinstance(p, dict) and isinstance(p.get("stages"), dict) else None


def layer_means(grid) -> list[float]:
    """[[per head] per layer] -> the head mean of each layer (a layer with a non-number is dropped)."""
    out = []
    for heads in grid if isinstance(grid, list) else []:
        values = [number(h) for h in heads] if isinstance(heads, list) else []
        if values and None not in values:
            out.append(float(np.mean(values)))
    return out


def measures(stage: dict) -> list[tuple[str, str, float]]:
    """One stage's (measure, layer, value); layer "" for influence."""
    out = []
    influence = stage.get("influence") if isinstance(stage.get("influence"), dict) else {}
    for name in INFLUENCE:
        if (v := number(influence.get(name))) is not None:
            out.append((f"influence.{name}", "", v))
    attention = stage.get("attention") if isinstance(stage.get("attention"), dict) else {}
    for name in ATTENTION:
        per_layer = layer_means(attention.get(name))
        out += [(f"attention.{name}", str(i), v) for i, v in enumerate(per_layer)]
        if per_layer:
            out.append((f"attention.{name}", "mean", float(np.mean(per_layer))))
    return out


def profile(stage: dict) -> pd.Series | None:
    """The influence profile normalised to sum 1 over all its offsets, indexed by offset k."""
    inf = stage.get("influence") if isinstance(stage.get("influence"), dict) else {}
    k, p = inf.get("offsets"), inf.get("profile")
    if not isinstance(k, list) or not isinstance(p, list) or len(k) != len(p) or not k:
        return None
    values = [number(v) for v in p]
    if None in values or sum(values) <= 0:
        return None
    return pd.Series(values, index=[int(x) for x in k], dtype=float) / sum(values)


def collect(t_ok: pd.DataFrame) -> tuple[pd.DataFrame, list, list]:
    """-> (tidy rows: group_hash, arch, recipe, seed, stage, measure, layer, value; profiles: (group_hash,
    arch, recipe, stage, Series); the probes settings of each run that has them)."""
    rows, profiles, settings = [], [], []
    for r in t_ok.itertuples():
        probes = read(r.path)
        if probes is None:
            continue
        settings.append(probes.get("settings") if isinstance(probes.get("settings"), dict) else {})
        for stage, body in probes["stages"].items():
            if not isinstance(body, dict):
                continue
            rows += [(r.group_hash, r.arch, r.recipe, r.seed, stage, m, layer, v) for m, layer, v in measures(body)]
            if (p := profile(body)) is not None:
                profiles.append((r.group_hash, r.arch, r.recipe, stage, p))
    cols = ["group_hash", "arch", "recipe", "seed", "stage", "measure", "layer", "value"]
    return pd.DataFrame(rows, columns=cols), profiles, settings


def settings_text(found: list[dict]) -> str:
    """'n_examples=32, directions=8 (12 runs) | null (6 runs)': each probe setting once, with the number of
    runs behind each value where runs differ."""
    parts = []
    for k in sorted({k for s in found for k in s}):
        counts = pd.Series([json.dumps(s.get(k)) for s in found]).value_counts().sort_index()
        parts.append(f"{k}={counts.index[0]}" if len(counts) == 1 else
                     f"{k}=" + " | ".join(f"{v} ({n} runs)" for v, n in counts.items()))
    return ", ".join(parts) or "none recorded"


def summarise(task: str, tidy: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """{(group_hash, stage, measure, layer): stats.Point} over the seeds (sorted) that carry the measure."""
    out = {}
    for (group, arch, recipe, stage, measure, layer), g in tidy.groupby(
            ["group_hash", "arch", "recipe", "stage", "measure", "layer"], sort=True):
        values = g.sort_values("seed").value.to_numpy(dtype=float)
        key = "|".join(map(str, (task, arch, recipe, group, stage, measure, layer)))
        out[(group, stage, measure, layer)] = stats.Point(float(values.mean()), stats.boot_means(values, key, n_boot,
                                                                                                  seed), len(values))
    return out


def stage_rank(s: str) -> tuple:
    return (STAGES.index(s) if s in STAGES else len(STAGES), s)


def layer_rank(layer: str) -> tuple:
    return (1, 0) if layer == "mean" else (0, int(layer)) if layer.isdigit() else (0, -1)


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def span(p: stats.Point | None, digits: int = 2) -> list:
    """[mean, 95% CI, n] cells of a point (– when absent)."""
    if p is None:
        return ["–", "–", "–"]
    return [fmt(p.mean, digits), bounds(stats.ci(p.boot, p.n), digits), p.n]


def bounds(lo_hi: tuple | None, digits: int = 2) -> str:
    return "n/a (1 seed)" if lo_hi is None else f"[{fmt(lo_hi[0], digits)}, {fmt(lo_hi[1], digits)}]"


def correlation(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """(Pearson r, Spearman r: Pearson of average ranks), None when undefined (< 3 cells, or no spread)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return None, None
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(rx, ry)[0, 1])


def section(task: str, t_ok: pd.DataFrame, cells: dict, out: Path, name: str, n_boot: int, seed: int,
            axis: tuple | None = None) -> tuple[list, list, list]:
    """The Locality section of one task. axis: (key, [(value, text)], {group_hash: value or
    study.EVERYWHERE}) when the task has a study axis. -> (blocks, [(png, caption)], locality.csv rows);
    nothing at all when no run of the task has probes."""
    tidy, profiles, settings = collect(t_ok)
    if tidy.empty:
        return [], [], []
    points = summarise(task, tidy, n_boot, seed)
    key, columns, value_of = axis if axis else ("", [(None, "")], {})

    def stands(group, v) -> bool:
        return not axis or value_of.get(group) is study.EVERYWHERE or value_of.get(group) == v

    # A row is (arch, recipe) and, where one arch × recipe has several configurations at one axis value
    # (never pooled, as elsewhere in the report), its configuration hash.
    pairs = t_ok[["arch", "recipe", "group_hash"]].drop_duplicates()
    several = {(a, r) for (a, r), g in pairs.groupby(["arch", "recipe"])
               for v, _ in columns if sum(stands(h, v) for h in g.group_hash) > 1}
    rows_of = sorted(((a, r, g) for a, r, g in pairs.itertuples(index=False)),
                     key=lambda x: (x[0], figures.recipe_rank(x[1]), x[2]))

    # One line of a table per (arch, recipe): at each axis value, the configuration standing there.
    lines = {}
    for a, r, h in rows_of:
        lab = (a, f"{r} [{h[:8]}]") if (a, r) in several else (a, r)
        lines.setdefault(lab, {}).update({i: h for i, (v, _) in enumerate(columns) if stands(h, v)})

    def table(measure: str, layers: bool, blocks_of, block_names: list[str]) -> Table | None:
        """Rows (arch, recipe, stage[, layer]) that have `measure`, a column block per axis value."""
        rows = []
        for lab, at in lines.items():
            found = sorted({(s, lay) for g, s, m, lay in points if m == measure and g in at.values()},
                           key=lambda x: (stage_rank(x[0]), layer_rank(x[1])))
            for s, lay in found:
                per = [blocks_of(at[i], s, lay) if i in at else ["–"] * len(block_names) for i in range(len(columns))]
                rows.append([*lab, s, *([lay] if layers else []), *(c for p in per for c in p)])
        if not rows:
            return None
        head = [f"{t}: {c}" if axis else c for _, t in columns for c in block_names]
        return Table(["arch", "recipe", "stage", *(["layer"] if layers else []), *head], rows)

    def mean_text(g, s, m, lay) -> str:
        p = points.get((g, s, m, lay))
        return fmt(None if p is None else p.mean, 3)

    lacking = len(t_ok) - len(settings)
    blocks = [("h3", "Locality"),
              ("p", f"{len(settings)} of {len(t_ok)} counted runs carry probes (result.json `probes`)"
               + (f"; {lacking} without them are left out of this section" if lacking else "")
               + f". Probe settings: {settings_text(settings)}"
               + ". Each number is the mean over seeds, with a 95% percentile bootstrap CI over seeds; n = seeds "
               "with that probe. Distances are in positions, entropy in nats, local share is the fraction of "
               "attention mass within the probes' window. Stages: init (before training), pretrained (after "
               "spt's pretraining), finetuned (the weights that were tested).")]
    t1 = table(HEADLINE, False, lambda g, s, lay: span(points.get((g, s, HEADLINE, lay))), ["mean", "95% CI", "n"])
    if t1:
        blocks += [("p", "Influence: off-diagonal mean distance sum_{k≠0} |k| p(k) / sum_{k≠0} p(k), p(k) = mean "
                    "Frobenius norm of d h_t / d x_{t−k} (k = 0 left out: residual connections put an identity "
                    "there):"), ("table", t1)]
    t2 = table("influence.mean_distance", False,
               lambda g, s, lay: span(points.get((g, s, "influence.mean_distance", lay)))[:2]
               + span(points.get((g, s, "influence.half_mass_distance", lay)))[:2],
               ["mean distance", "95% CI", "half-mass distance", "95% CI"])
    if t2:
        blocks += [("p", "Influence with k = 0: mean distance, and half-mass distance (the smallest d with half "
                    "the profile's mass within |k| ≤ d):"), ("table", t2)]
    t3 = table(ATTN_HEADLINE, True, lambda g, s, lay: span(points.get((g, s, ATTN_HEADLINE, lay))),
               ["mean", "95% CI", "n"])
    if t3:
        blocks += [("p", "Attention distance per layer (mean over heads of sum_j a_ij |i − j|, over real query "
                    "positions; layer mean: the mean over layers):"), ("table", t3),
                   ("p", "Attention entropy (nats) and local share per layer, means over seeds (their CIs are in "
                    "locality.csv):"),
                   ("table", table("attention.entropy", True,
                                   lambda g, s, lay: [mean_text(g, s, "attention.entropy", lay),
                                                      mean_text(g, s, "attention.local_share", lay)],
                                   ["entropy", "local share"]))]
    blocks += change_blocks(task, cells, points, rows_of, columns, stands, key)

    figs = []
    if profiles:
        figs.append((influence_figure(task, profiles, rows_of, columns, stands, key,
                                      out / f"locality_influence_{name}.png"),
                     f"{task}: influence profiles (normalised to sum 1 over all offsets, shown for |k| ≤ {CLIP} or "
                     "the data's largest |k|; mean over seeds; solid: finetuned, dotted: spt pretrained, dashed grey: "
                     "init, all recipes' runs)"))
    if t3:
        figs.append((attention_figure(task, points, rows_of, columns, stands, key,
                                      out / f"locality_attention_{name}.png"),
                     f"{task}: attention distance per layer by stage (mean over heads; error bars: 95% CI over seeds)"))
    csv = []
    for v, text in columns:
        for a, r, g in rows_of:
            if not stands(g, v):
                continue
            for (_, s, m, lay), p in sorted(((k, p) for k, p in points.items() if k[0] == g),
                                            key=lambda kp: (stage_rank(kp[0][1]), kp[0][2], layer_rank(kp[0][3]))):
                lo_hi = stats.ci(p.boot, p.n)
                csv.append(dict(zip(CSV_COLUMNS, (task, key, text, a, r, g, s, m, lay, p.mean,
                                                  *(lo_hi or (None, None)), p.n))))
    return blocks, figs, csv


def change_blocks(task, cells, points, rows_of, columns, stands, key) -> list:
    """Per (arch, axis value) with one spt and one supervised configuration: Δlocality (spt's finetuned −
    supervised's finetuned) and gain (spt − supervised mean test accuracy), and their correlation over cells."""
    base, treat = stats.BASE, stats.TREAT
    measures_ = [(HEADLINE, "influence off-diagonal mean distance"), (ATTN_HEADLINE, "attention distance (layer mean)")]
    rows, pairs_of, unprobed = [], {m: [] for m, _ in measures_}, []
    for arch in sorted({a for a, _, _ in rows_of}):
        for v, text in columns:
            found = {r: [g for a, rr, g in rows_of if a == arch and rr == r and stands(g, v)] for r in (base, treat)}
            if len(found[base]) != 1 or len(found[treat]) != 1:
                continue
            gb, gt = found[base][0], found[treat][0]
            cb, ct = cells[(task, arch, base, gb)], cells[(task, arch, treat, gt)]
            gain = ct.mean - cb.mean
            gain_ci = stats.ci(ct.boot - cb.boot, min(ct.n, cb.n))
            row = [arch, *([text] if key else [])]
            for m, _ in measures_:
                layer = "" if m == HEADLINE else "mean"
                pb, pt = points.get((gb, "finetuned", m, layer)), points.get((gt, "finetuned", m, layer))
                if pb is None or pt is None:
                    row += ["–", "–"]
                    continue
                d_ci = stats.ci(pt.boot - pb.boot, min(pt.n, pb.n))
                pairs_of[m].append((pt.mean - pb.mean, gain, d_ci))
                row += [fmt(pt.mean - pb.mean), bounds(d_ci)]
            if all(c == "–" for c in row[len(row) - 4:]):  # no measure has both recipes' finetuned probes here
                unprobed.append(arch + (f" at {text}" if key else ""))
                continue
            row += [f"{100 * gain:+.2f}", "n/a (1 seed)" if gain_ci is None else
                    f"[{100 * gain_ci[0]:+.2f}, {100 * gain_ci[1]:+.2f}]"]
            rows.append(row)
    left_out = (f" Left out, without finetuned probes for both recipes: {', '.join(unprobed)}." if unprobed else "")
    if not rows:
        return [("p", f"No architecture{' at any axis value' if key else ''} has both {treat} and {base} with one "
                 "configuration each and their finetuned probes, so locality is not compared with the gain."
                 + left_out)]
    blocks = [("p", f"Change in locality and {treat}'s gain, per architecture{' and ' + key if key else ''}: "
               f"Δ = {treat}'s finetuned − {base}'s finetuned (positions; 95% CI from the seeds' resamples); gain = "
               f"mean test accuracy of {treat} − {base} (points, all seeds)." + left_out),
              ("table", Table(["arch", *([key] if key else []), "Δ influence off-diag distance", "95% CI",
                               "Δ attention distance (layer mean)", "95% CI", "gain", "95% CI"], rows))]
    lines = []
    for m, what in measures_:
        found = pairs_of[m]
        if not found:
            continue
        lower = sum(d < 0 for d, _, _ in found)
        excl = sum(c is not None and (c[1] < 0 or c[0] > 0) for _, _, c in found)
        r, rho = correlation([d for d, _, _ in found], [g for _, g, _ in found])
        n = len(found)
        cells_n = f"{n} cell" + ("s" if n != 1 else "")
        text = (f"{what}: {treat}'s finetuned value is lower than {base}'s in {lower} of {cells_n}; the 95% CI of "
                f"the difference excludes 0 in {excl}. Correlation of Δ with the gain over the {cells_n}: ")
        text += ("undefined (needs >= 3 cells with spread in both)" if r is None else
                 f"Pearson r = {r:.2f}, Spearman r = {rho:.2f}")
        if n < 4:
            text += f" — with n = {cells_n} a correlation cannot mean much"
        lines.append(text + ".")
    return blocks + [("list", lines)]


COLOURS = {"supervised": "C0", "spt": "C1", "supervised_matched": "C2"}  # as the recipes' bars elsewhere


def colour(recipe: str) -> str:
    return COLOURS.get(recipe, f"C{3 + sum(map(ord, str(recipe))) % 6}")


def panels(n_rows: int, n_cols: int, width: float, sharey, sharex=False):
    """A grid of panels; a shared y scale so that panels compare by eye (the legend goes right of them)."""
    return plt.subplots(n_rows, n_cols, figsize=(width * n_cols + 1.5, 3.0 * n_rows), squeeze=False, sharey=sharey,
                        sharex=sharex)


def influence_figure(task, profiles, rows_of, columns, stands, key, path: Path) -> Path:
    """One panel per arch (and axis value: a row each): the mean normalised profile over seeds per recipe."""
    archs = sorted({a for a, _, _ in rows_of})
    biggest = max((int(np.abs(p.index).max()) for *_, p in profiles), default=CLIP)
    clip = min(CLIP, biggest)
    fig, axes = panels(len(columns), len(archs), 4.0, True, sharex=True)

    def mean_of(found):
        s = pd.concat(found, axis=1).mean(axis=1).sort_index()  # offsets a run lacks count as absent
        return s[(s.index >= -clip) & (s.index <= clip)]

    for i, (v, text) in enumerate(columns):
        for j, arch in enumerate(archs):
            ax = axes[i][j]
            init = [p for g, a, r, s, p in profiles if a == arch and s == "init" and stands(g, v)]
            if init:
                m = mean_of(init)
                ax.plot(m.index, m.values, ls="--", color="0.55", lw=1, label="init (all recipes)")
            for a, recipe, g in rows_of:
                if a != arch or not stands(g, v):
                    continue
                for stage, ls in (("pretrained", ":"), ("finetuned", "-")):
                    found = [p for gg, _, _, s, p in profiles if gg == g and s == stage]
                    if found:
                        m = mean_of(found)
                        ax.plot(m.index, m.values, ls=ls, color=colour(recipe), lw=1.4, label=f"{recipe} {stage}")
            if not ax.lines:
                ax.text(0.5, 0.5, "no runs with probes", transform=ax.transAxes, ha="center", color="0.5")
            ax.set_xlim(-clip, clip)
            ax.set_title(f"{arch}" + (f" @ {key}={text}" if key else ""), fontsize=9)
            if i == len(columns) - 1:  # the x axis is shared: labelled once, under the bottom row
                ax.set_xlabel("offset k = t − s")
            if j == 0:
                ax.set_ylabel("share of influence (log)")
            ax.set_yscale("log")  # k = 0 (the residual identity) is orders of magnitude above the tails
            ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: influence profiles")
    fig.tight_layout()
    figures.legend_outside(fig, axes.flat)
    return figures.save(fig, path)


def attention_figure(task, points, rows_of, columns, stands, key, path: Path) -> Path:
    """A panel per stage, a row per (attention arch, axis value): distance per layer, a line per recipe."""
    have = {g for g, _, m, _ in points if m == ATTN_HEADLINE}
    archs = sorted({a for a, _, g in rows_of if g in have})
    grid = [(arch, v, text) for arch in archs for v, text in columns]
    stages = sorted({s for g, s, m, _ in points if m == ATTN_HEADLINE}, key=stage_rank)
    fig, axes = panels(len(grid), len(stages), 3.6, "row", sharex=True)
    last = max(int(lay) for g, _, m, lay in points if m == ATTN_HEADLINE and lay.isdigit())
    for i, (arch, v, text) in enumerate(grid):
        mine = [(r, g) for a, r, g in rows_of if a == arch and g in have and stands(g, v)]
        for j, stage in enumerate(stages):
            ax = axes[i][j]
            for recipe, g in mine:
                layers = sorted({lay for gg, s, m, lay in points if gg == g and s == stage and m == ATTN_HEADLINE
                                 and lay != "mean"}, key=layer_rank)
                if not layers:
                    continue
                ps = [points[(g, stage, ATTN_HEADLINE, lay)] for lay in layers]
                cis = [stats.ci(p.boot, p.n) for p in ps]
                means = np.array([p.mean for p in ps])
                err = np.array([[m - c[0] if c else 0 for m, c in zip(means, cis)],
                                [c[1] - m if c else 0 for m, c in zip(means, cis)]])
                # Side by side, each recipe at the same place in every panel.
                x = np.array([int(lay) for lay in layers]) + 0.08 * (figures.recipe_rank(recipe)[0] - 1)
                ax.errorbar(x, means, yerr=err, marker="o", capsize=3, color=colour(recipe), label=recipe)
            ax.set_title(f"{arch}{f' @ {key}={text}' if key else ''}: {stage}", fontsize=9)
            ax.set_xlim(-0.4, last + 0.4)
            if i == len(grid) - 1:
                ax.set_xlabel("layer")
            if j == 0:
                ax.set_ylabel("attention distance (positions)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
    fig.suptitle(f"{task}: attention distance per layer")
    fig.tight_layout()
    figures.legend_outside(fig, axes.flat)
    return figures.save(fig, path)
