"""The numbers of a report: per-cell accuracy statistics, gaps between architectures, the gap SPT
closes, and SPT's gain per architecture — each with its uncertainty.

A *cell* is (task, arch, recipe, group_hash): the seeds of one configuration. Uncertainty comes from
a percentile bootstrap over seeds: each cell's seeds are resampled with replacement B times, by a
generator seeded from (report seed, crc32 of the cell's key "task|arch|recipe|group_hash"), so a
report is reproducible and a cell's resamples are the same in every table that uses it. A derived
statistic (a gap, a ratio) is computed on every resample; its 95% CI is the 2.5th and 97.5th
percentiles (numpy's default linear interpolation). With 1 seed in a cell there is no spread: std,
CIs and tests are `None`, never a silent NaN.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports.load import BASELINES

EPS = 1e-9  # a supervised gap below this is "no gap": the ratio gap(spt)/gap(supervised) is undefined
LEVEL = 0.95
# The comparison the suite is about, and its compute-matched control: supervised given as many optimizer
# steps as spt's pretraining + fine-tuning. Other recipes still get tables.
BASE, TREAT, MATCHED = "supervised", "spt", "supervised_matched"


@dataclass
class Cell:
    """Accuracy of one configuration over its seeds, with bootstrap means of resampled seeds."""

    key: tuple  # (task, arch, recipe, group_hash)
    accs: np.ndarray  # (n,) test accuracies, ordered by seed
    boot: np.ndarray  # (B,) means of resampled seeds

    @property
    def n(self) -> int:
        return len(self.accs)

    @property
    def mean(self) -> float:
        return float(self.accs.mean())


@dataclass
class Point:
    """A mean-like value with bootstrap replicates; `n` is the fewest seeds behind it (CI needs >= 2)."""

    mean: float
    boot: np.ndarray
    n: int
    accs: np.ndarray | None = None  # the seeds' accuracies for a single cell; None for an average


def boot_means(accs: np.ndarray, key: str, n_boot: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    idx = rng.integers(0, len(accs), size=(n_boot, len(accs)))
    return accs[idx].mean(axis=1)


def ci(boot: np.ndarray, n: int) -> tuple[float, float] | None:
    """95% percentile interval of finite replicates, or None when a cell behind it has < 2 seeds."""
    finite = boot[np.isfinite(boot)]
    if n < 2 or finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def make_cells(ok: pd.DataFrame, n_boot: int, seed: int) -> dict[tuple, Cell]:
    cells = {}
    for key, g in ok.groupby(["task", "arch", "recipe", "group_hash"], sort=True):
        key = tuple(str(k) for k in key)
        accs = g.sort_values("seed")["test_acc"].to_numpy(dtype=float)
        cells[key] = Cell(key, accs, boot_means(accs, "|".join(key), n_boot, seed))
    return cells


def mean_or_none(values: pd.Series) -> float | None:
    return float(values.mean()) if values.notna().any() else None


def cell_table(ok: pd.DataFrame, cells: dict[tuple, Cell], seed: int = 0) -> pd.DataFrame:
    """One row per cell: accuracy (n, mean, std, CI), budget (params, steps, compute, device, impl), the
    mean of its runs' floors (load.BASELINES; None without them) and of the pretraining masked-token
    accuracy with its CI (pretrain_n seeds recorded it; resampled like test accuracy, key + '|pretrain')."""
    rows = []
    for key, cell in cells.items():
        task, arch, recipe, group = key
        g = ok[(ok.task == task) & (ok.arch == arch) & (ok.recipe == recipe) & (ok.group_hash == group)]
        interval = ci(cell.boot, cell.n)
        pre = g.sort_values("seed").pretrain_val_acc.dropna().to_numpy(dtype=float)
        pre_ci = ci(boot_means(pre, "|".join(key) + "|pretrain", len(cell.boot), seed), len(pre)) if len(pre) else None
        rows.append({
            "task": task, "arch": arch, "recipe": recipe, "group_hash": group, "n": cell.n,
            "seeds": sorted(g.seed.tolist()), "mean": cell.mean,
            "std": float(cell.accs.std(ddof=1)) if cell.n > 1 else None,
            "ci_lo": interval[0] if interval else None, "ci_hi": interval[1] if interval else None,
            "val_acc_mean": mean_or_none(g.val_acc),
            "params": distinct(g.params), "pretrain_steps": distinct(g.pretrain_steps),
            "finetune_steps": distinct(g.finetune_steps),
            "compute_s": mean_or_none(g.compute_s),
            "device": distinct(g.device), "impl": distinct(g.impl),
            **{col: mean_or_none(g[col]) for col in BASELINES},
            "pretrain_n": len(pre), "pretrain_val_acc_mean": float(pre.mean()) if len(pre) else None,
            "pretrain_ci_lo": pre_ci[0] if pre_ci else None, "pretrain_ci_hi": pre_ci[1] if pre_ci else None,
        })
    return pd.DataFrame(rows)


def distinct(values: pd.Series) -> str:
    """'a' or 'a, b' (sorted, missing shown as '?'): differing values stay visible."""
    seen = sorted({"?" if pd.isna(v) else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))
                   for v in values})
    return ", ".join(seen)


def floors(runs: pd.DataFrame) -> dict[str, list[float]]:
    """{BASELINES column: its distinct values over `runs`} ([] when none recorded one). Runs on the same
    data compute the same floors, so more than one value means they did not see the same data."""
    return {col: sorted({round(float(v), 9) for v in runs[col].dropna()}) for col in BASELINES}


def above(lo, mean, n: int, floor) -> bool | None:
    """Whether a cell is above a floor: its 95% CI lower bound (its mean, with one seed) exceeds it. None
    without a floor."""
    if floor is None or pd.isna(floor):
        return None
    return bool((lo if n > 1 else mean) > floor)


# --- comparisons between architectures -------------------------------------------------------------

def points(cells: dict[tuple, Cell]) -> tuple[dict, list]:
    """-> ({task: {recipe: {arch: Point}}} for cells with one configuration, [(task, arch, recipe,
    [group hashes])] for (task, arch, recipe) found with several configurations: those are never
    pooled and never silently picked, so they stay out of comparisons."""
    by = {}
    for (task, arch, recipe, group), cell in cells.items():
        by.setdefault((task, arch, recipe), []).append((group, cell))
    out, ambiguous = {}, []
    for (task, arch, recipe), found in sorted(by.items()):
        if len(found) > 1:
            ambiguous.append((task, arch, recipe, [g for g, _ in found]))
            continue
        cell = found[0][1]
        out.setdefault(task, {}).setdefault(recipe, {})[arch] = Point(cell.mean, cell.boot, cell.n, cell.accs)
    return out, ambiguous


def average_over_tasks(table: dict) -> tuple[dict, list]:
    """Per recipe and arch, the unweighted mean over tasks of the task means (resamples averaged the
    same way), for (recipe, arch) present in every task. -> ({recipe: {arch: Point}}, left-out notes)."""
    tasks = sorted(table)
    out, left_out = {}, []
    combos = sorted({(r, a) for t in tasks for r, archs in table[t].items() for a in archs})
    for recipe, arch in combos:
        have = [t for t in tasks if arch in table[t].get(recipe, {})]
        if len(have) < len(tasks):
            left_out.append(f"{arch}/{recipe} (missing in {', '.join(t for t in tasks if t not in have)})")
            continue
        ps = [table[t][recipe][arch] for t in tasks]
        out.setdefault(recipe, {})[arch] = Point(float(np.mean([p.mean for p in ps])),
                                                 np.mean([p.boot for p in ps], axis=0), min(p.n for p in ps))
    return out, left_out


def gap(archs: dict[str, Point]) -> dict | None:
    """Best − worst mean over archs (needs >= 2), and each arch − best, with resampled CIs."""
    if len(archs) < 2:
        return None
    names = sorted(archs)
    means = np.array([archs[a].mean for a in names])
    boots = np.stack([archs[a].boot for a in names])  # (archs, B)
    n = min(archs[a].n for a in names)
    best = names[int(np.argmax(means))]
    worst = names[int(np.argmin(means))]
    b = archs[best]
    return {
        "best": best, "worst": worst, "gap": float(means.max() - means.min()),
        "gap_boot": boots.max(axis=0) - boots.min(axis=0), "n": n,
        "gap_ci": ci(boots.max(axis=0) - boots.min(axis=0), n),
        "vs_best": {a: (archs[a].mean - b.mean, ci(archs[a].boot - b.boot, min(archs[a].n, b.n))) for a in names},
    }


def gap_closed(recipes: dict[str, dict[str, Point]], base: str = "supervised", treat: str = "spt") -> dict:
    """1 − gap(treat)/gap(base) over the archs that have both recipes. `value` None with `why` when
    undefined: a recipe missing, fewer than 2 such archs, or gap(base) ≈ 0."""
    have = sorted(set(recipes.get(base, {})) & set(recipes.get(treat, {})))
    missing = sorted((set(recipes.get(base, {})) | set(recipes.get(treat, {}))) - set(have))
    out = {"archs": have, "left_out": missing, "value": None, "ci": None, "why": None, "undefined_resamples": 0}
    if len(have) < 2:
        out["why"] = (f"needs >= 2 architectures run with both {base} and {treat} "
                      f"(found {len(have)}{': ' + ', '.join(have) if have else ''})")
        return out
    g_base = gap({a: recipes[base][a] for a in have})
    g_treat = gap({a: recipes[treat][a] for a in have})
    out.update(gap_base=g_base["gap"], gap_treat=g_treat["gap"])
    if g_base["gap"] < EPS:
        out["why"] = f"gap({base}) is 0: every architecture has the same mean accuracy, nothing to close"
        return out
    out["value"] = 1 - g_treat["gap"] / g_base["gap"]
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(g_base["gap_boot"] < EPS, np.nan, 1 - g_treat["gap_boot"] / g_base["gap_boot"])
    out["undefined_resamples"] = int(np.isnan(boot).sum())
    out["ci"] = ci(boot, min(g_base["n"], g_treat["n"]))
    return out


def gain(base: Point, treat: Point) -> dict:
    """treat − base mean accuracy with a resampled CI, and Welch's t-test over seeds for single cells
    (p None with `why` when a recipe has < 2 seeds or neither has any spread)."""
    n = min(base.n, treat.n)
    base_accs, treat_accs = base.accs, treat.accs
    out = {"gain": treat.mean - base.mean, "ci": ci(treat.boot - base.boot, n), "t": None, "p": None,
           "significant": None, "why": None}
    if base_accs is None or treat_accs is None:
        return out
    if len(base_accs) < 2 or len(treat_accs) < 2:
        out["why"] = "needs >= 2 seeds per recipe"
        return out
    if base_accs.std() == 0 and treat_accs.std() == 0:
        out["why"] = "no spread in either recipe: the t-test is undefined"
        return out
    from scipy import stats as sps  # here: importing scipy.stats takes ~1 s, and only this needs it

    with warnings.catch_warnings():  # scipy warns about precision when a recipe's seeds are all equal
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = sps.ttest_ind(treat_accs, base_accs, equal_var=False)
    out.update(t=float(t), p=float(p), significant=bool(p < 0.05))
    return out
