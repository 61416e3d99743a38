"""Reports: every number checked against values computed here, independently, from synthetic
result.json files (numpy/scipy directly); failed and unfinished runs; configurations that must not
be pooled; mixed implementations; escaping of hostile names."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports.__main__ import main

B, SEED = 2000, 0


def write(root, rel, **fields):
    """A result.json as recipes/experiment.py writes it (the fields reports read), plus a metrics log."""
    path = root / rel / "result.json"
    path.parent.mkdir(parents=True)
    r = {"task": "listops", "arch": "transformer", "recipe": "spt", "seed": 0, "status": "ok", "reason": None,
         "group_hash": "g-default", "config_hash": rel, "params": {"total": 1000}, "device": "cpu",
         "impl": "torch", "steps": {"finetune": 50}, "wall_time_s": {"finetune": 2.0, "total": 9.0},
         "config": {"seed": 0, "finetune": {"lr": 0.001}}}
    r.update(fields)
    path.write_text(json.dumps(r))
    acc = (r.get("metrics") or {}).get("val_acc", 0.5)
    rows = [{"stage": "pretrain", "step": 5, "val_acc": 0.01},
            *({"stage": "finetune", "step": s, "val_acc": acc * s / 2} for s in (1, 2))]
    (path.parent / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


def pct(x):
    return f"{100 * x:.2f}"


def boot(accs, key):
    """The documented resampling: generator seeded by (seed, crc32 of 'task|arch|recipe|group_hash'),
    indices of shape (B, n), mean per resample."""
    accs = np.asarray(accs, dtype=float)
    rng = np.random.default_rng([SEED, zlib.crc32(key.encode())])
    return accs[rng.integers(0, len(accs), size=(B, len(accs)))].mean(axis=1)


def ci(reps):
    return tuple(np.percentile(reps[np.isfinite(reps)], [2.5, 97.5]))


def table_row(text: str, *key: str) -> list[str]:
    """The one Markdown table row of `text` whose first cells are `key`."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ")]
    found = [r for r in rows if r[: len(key)] == list(key)]
    assert len(found) == 1, (key, found)
    return found[0][len(key):]


def same(cells: list[str], *expected) -> None:
    """Report cells against values computed here: floats are fractions shown in % (2 decimals, so
    within 0.005 + rounding noise), pairs are CIs shown as [lo, hi], strings match exactly."""
    assert len(cells) >= len(expected), (cells, expected)
    for cell, want in zip(cells, expected):
        if isinstance(want, tuple):
            lo, hi = cell.strip("[]").split(", ")
            same([lo, hi], *want)
        elif isinstance(want, float):
            assert abs(float(cell.split()[0]) - 100 * want) <= 0.00501, (cell, want, cells)
        else:
            assert cell == str(want), (cell, want, cells)


TASKS = ("listops", "text")
ARCHS = ("cnn", "s4", "transformer")  # any names: nothing in reports lists them
RECIPES = ("spt", "supervised")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """2 tasks x 3 archs x 2 recipes x 3 seeds of random accuracies, and the report built from them."""
    root = tmp_path_factory.mktemp("grid")
    rng = np.random.default_rng(123)
    accs = {}
    for task in TASKS:
        for i, arch in enumerate(ARCHS):
            for recipe in RECIPES:
                centre = 0.4 + 0.1 * i if recipe == "supervised" else 0.6 + 0.03 * i
                group = f"{task}-{arch}-{recipe}"
                accs[(task, arch, recipe)] = values = np.round(centre + rng.normal(0, 0.03, 3), 4).tolist()
                for seed, acc in enumerate(values):
                    wall = {"finetune": 10.0 + seed, "pretrain": 30.0} if recipe == "spt" else {"finetune": 10.0 + seed}
                    write(root, f"{task}/{arch}/{recipe}/seed{seed}", task=task, arch=arch, recipe=recipe, seed=seed,
                          group_hash=group, metrics={"test_acc": acc, "val_acc": acc - 0.01},
                          steps={"finetune": 50, **({"pretrain": 80} if recipe == "spt" else {})},
                          wall_time_s={**wall, "total": 1.0}, params={"total": 1000 + i})
    out = root / "out"
    assert main([str(root), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    return root, out, accs, (out / "report.md").read_text()


@pytest.mark.slow
def test_cell_rows_mean_std_ci_and_budget(grid):
    root, out, accs, md = grid
    for (task, arch, recipe), a in accs.items():
        group = f"{task}-{arch}-{recipe}"
        a = np.array(a)
        section = md.split(f"## Task: {task}")[1].split("\n## ")[0]
        compute = np.mean([10.0 + s + (30.0 if recipe == "spt" else 0) for s in range(3)])
        cells = table_row(section, arch, recipe, group[:8])
        same(cells, "3", "0, 1, 2", a.mean(), a.std(ddof=1), ci(boot(a, f"{task}|{arch}|{recipe}|{group}")),
             (a - 0.01).mean(), str(1000 + ARCHS.index(arch)), "80" if recipe == "spt" else "0", "50",
             f"{compute:.1f}", "cpu", "torch")
    assert "36 runs: 36 counted, 0 repeating a configuration already counted, 0 not ok" in md
    assert "12 of 12 configurations have 2–4 seeds" in md and "Warnings" not in md
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 36 and all(line.endswith(",True") for line in csv[1:])
    # Figures exist and the HTML embeds each of them, with nothing fetched from elsewhere.
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy.png", "curves_listops_0.png", "curves_text_1.png", "gap.png"]
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and 'src="http' not in page
    assert all(f"]({p})" in md for p in pngs)
    # The numbers behind the curves: fine-tuning rows only (the pretraining row at step 5 is not one).
    curves = pd.read_csv(out / "curves.csv").set_index(["task", "label", "step"])
    assert len(curves) == len(accs) * 2
    for (task, arch, recipe), a in accs.items():
        for step in (1, 2):
            vals = (np.array(a) - 0.01) * step / 2  # what write() logged for each seed
            row = curves.loc[(task, f"{arch}/{recipe}", step)]
            assert row.n == 3 and np.isclose(row["mean"], vals.mean()) and np.isclose(row["std"], vals.std(ddof=1))


def gap_expectation(cells: dict, archs):
    """-> (best, worst, gap, gap resamples, {arch: (diff to best, resamples)}) from means and resamples."""
    means = {a: np.mean(cells[a][0]) for a in archs}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    reps = np.stack([cells[a][1] for a in sorted(archs)])
    vs = {a: (means[a] - means[best], cells[a][1] - cells[best][1]) for a in archs}
    return best, worst, means[best] - means[worst], reps.max(0) - reps.min(0), vs


def check_gaps(text: str, cells: dict) -> dict:
    """Gap rows and arch − best rows of one section against `cells` {recipe: {arch: (accs, resamples)}}."""
    gaps = {}
    for recipe in RECIPES:
        best, worst, gap, reps, vs = gap_expectation(cells[recipe], ARCHS)
        gaps[recipe] = (gap, reps)
        same(table_row(text, recipe, "cnn, s4, transformer"), best, worst, gap, ci(reps))
        for arch, (d, r) in vs.items():
            cell = table_row(text, arch)[RECIPES.index(recipe)]
            if arch == best:
                assert cell == "0.00 (best)"
            else:
                same(cell.split(" ", 1), d, ci(r))
    return gaps


@pytest.mark.slow
def test_gaps_gap_closed_and_gains(grid):
    root, out, accs, md = grid
    closed_table = md.split("## Gap closed by spt")[1].split("\n## ")[0]
    per_task = {}
    for task in TASKS:
        text = md.split(f"## Task: {task}")[1].split("\n## ")[0]
        cells = {r: {a: (accs[(task, a, r)], boot(accs[(task, a, r)], f"{task}|{a}|{r}|{task}-{a}-{r}"))
                     for a in ARCHS} for r in RECIPES}
        per_task[task] = cells
        gaps = check_gaps(text.split("### Gap between")[1].split("###")[0], cells)
        closed = 1 - gaps["spt"][0] / gaps["supervised"][0]
        same(table_row(closed_table, task, "cnn, s4, transformer"), gaps["supervised"][0], gaps["spt"][0], closed,
             ci(1 - gaps["spt"][1] / gaps["supervised"][1]), "–")
        gains = text.split("gain per architecture")[1]
        for arch in ARCHS:
            sup, spt = np.array(accs[(task, arch, "supervised")]), np.array(accs[(task, arch, "spt")])
            # Welch's t by hand, p from the t distribution with Welch–Satterthwaite degrees of freedom.
            v1, v2 = spt.var(ddof=1) / 3, sup.var(ddof=1) / 3
            t = (spt.mean() - sup.mean()) / math.sqrt(v1 + v2)
            df = (v1 + v2) ** 2 / (v1**2 / 2 + v2**2 / 2)
            p = 2 * sps.t.sf(abs(t), df)
            row = table_row(gains, arch)
            same(row, sup.mean(), spt.mean(), spt.mean() - sup.mean(),
                 ci(cells["spt"][arch][1] - cells["supervised"][arch][1]))
            assert abs(float(row[4]) - t) < 1e-3 and math.isclose(float(row[5]), p, rel_tol=1e-2)
            assert row[6] == ("yes" if p < 0.05 else "no")
            assert row[7] == f"{np.mean([10.0, 11.0, 12.0]):.1f} → {np.mean([40.0, 41.0, 42.0]):.1f}"

    # Average over tasks: mean of the task means, resamples averaged the same way.
    avg_text = md.split("## Average over tasks")[1].split("\n## ")[0]
    avg = {r: {a: ([np.mean([np.mean(accs[(t, a, r)]) for t in TASKS])],
                   np.mean([per_task[t][r][a][1] for t in TASKS], axis=0)) for a in ARCHS} for r in RECIPES}
    for recipe in RECIPES:
        for arch in ARCHS:
            same(table_row(avg_text, arch, recipe), avg[recipe][arch][0][0], ci(avg[recipe][arch][1]), "3")
    gaps = check_gaps(avg_text[avg_text.index("| recipe | architectures"):].split("Average spt gain")[0], avg)
    same(table_row(closed_table, "average over tasks", "cnn, s4, transformer"), gaps["supervised"][0],
         gaps["spt"][0], 1 - gaps["spt"][0] / gaps["supervised"][0], ci(1 - gaps["spt"][1] / gaps["supervised"][1]))
    for arch in ARCHS:
        sup, spt = avg["supervised"][arch], avg["spt"][arch]
        same(table_row(avg_text.split("Average spt gain")[1], arch), sup[0][0], spt[0][0], spt[0][0] - sup[0][0],
             ci(spt[1] - sup[1]))


@pytest.mark.slow
def test_report_is_reproducible(grid):
    root, out, accs, md = grid
    again = root / "again"
    assert main([str(root), "-o", str(again), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    strip = lambda text: text.split("\n", 3)[3]  # noqa: E731  (the first lines name the output folder)
    assert strip((again / "report.md").read_text()) == strip(md)


def test_failed_unfinished_and_broken_runs_are_listed_and_excluded(tmp_path):
    write(tmp_path, "ok0", seed=0, metrics={"test_acc": 0.5, "val_acc": 0.5})
    write(tmp_path, "ok1", seed=1, metrics={"test_acc": 0.7, "val_acc": 0.5})
    write(tmp_path, "copy_of_ok0", seed=0, config_hash="ok0", metrics={"test_acc": 0.5, "val_acc": 0.5})
    # A failed run's metrics (if any) must not count.
    write(tmp_path, "diverged", seed=2, status="failed", reason="finetune: non-finite loss (nan) at step 3",
          metrics={"test_acc": 0.99})
    write(tmp_path, "no_acc", seed=3, metrics={"val_acc": 0.4})
    write(tmp_path, "bad_acc", seed=4, metrics={"test_acc": 7})
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "result.json").write_text('{"task": "listops", ')
    stopped = tmp_path / "listops" / "transformer" / "spt" / "seed5"
    (stopped / ".hydra").mkdir(parents=True)
    (stopped / ".hydra" / "config.yaml").write_text("task: {name: listops}\narch: {name: transformer}\n"
                                                    "recipe: {name: spt}\nseed: 5\n")
    (stopped / "run.log").write_text("[2026-01-01 00:00:00,000][sptbench][ERROR] - pretrain.objective=ntp needs "
                                     "a causal backbone\n")
    killed = tmp_path / "killed"
    (killed / "checkpoints").mkdir(parents=True)
    cache = tmp_path / "_cache" / "pretrain" / "abc"  # a pretraining, not a run
    cache.mkdir(parents=True)
    (cache / "metrics.jsonl").write_text("{}\n")

    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert ("9 runs: 2 counted, 1 repeating a configuration already counted, 6 not ok and excluded from means "
            "(1 failed, 2 invalid, 2 unfinished, 1 unreadable)") in md
    listed = md.split("## Runs not counted")[1]
    for text in ("| diverged | listops | transformer | spt | 2 | failed | finetune: non-finite loss (nan) at step 3",
                 "| no_acc | listops | transformer | spt | 3 | invalid | result.json has status ok but "
                 "metrics.test_acc=None", "metrics.test_acc=7 is not an accuracy in [0, 1]",
                 "| torn | ? | ? | ? | ? | unreadable | result.json: ", "| listops/transformer/spt/seed5 | listops | "
                 "transformer | spt | 5 | unfinished | pretrain.objective=ntp needs a causal backbone |",
                 "| killed | ? | ? | ? | ? | unfinished | no result.json"):
        assert text in listed, text
    assert "_cache" not in md
    # Only ok0 (once) and ok1 count.
    same(table_row(md, "transformer", "spt", "g-defaul"), "2", "0, 1", 0.6, float(np.std([0.5, 0.7], ddof=1)))
    repeated = md.split("## Repeated configurations")[1]
    assert (str(tmp_path / "copy_of_ok0") in repeated) != (str(tmp_path / "ok0\n") in repeated)  # one of the two


def test_configurations_differing_beyond_the_seed_are_never_pooled(tmp_path):
    for seed, acc in enumerate([0.5, 0.6]):
        write(tmp_path, f"a/seed{seed}", seed=seed, group_hash="aaaaaaaa11", metrics={"test_acc": acc, "val_acc": acc})
        write(tmp_path, f"b/seed{seed}", seed=seed, group_hash="bbbbbbbb22", metrics={"test_acc": acc + 0.3,
                                                                                        "val_acc": acc},
              config={"seed": seed, "finetune": {"lr": 0.0003}})
        write(tmp_path, f"s/seed{seed}", seed=seed, recipe="supervised", group_hash="cccccccc",
              metrics={"test_acc": 0.4, "val_acc": 0.4})
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert f"| transformer | spt | aaaaaaaa | 2 | 0, 1 | {pct(0.55)} |" in md
    assert f"| transformer | spt | bbbbbbbb | 2 | 0, 1 | {pct(0.85)} |" in md
    assert pct(0.7) not in md  # the pooled mean of all four would be 70.00
    assert ("listops / transformer / spt has 2 configurations (aaaaaaaa, bbbbbbbb), reported apart and left out of "
            "gaps and gains: finetune.lr: 0.001 | 0.0003") in md
    assert "spt gain per architecture" not in md  # no single spt cell to compare with supervised


def test_mixed_implementations_and_devices_are_flagged(tmp_path):
    write(tmp_path, "m0", arch="mamba", seed=0, impl="cuda", device="cuda", metrics={"test_acc": 0.5})
    write(tmp_path, "m1", arch="mamba", seed=1, impl="torch", metrics={"test_acc": 0.6}, code_version="abc")
    write(tmp_path, "m2", arch="mamba", seed=0, recipe="supervised", group_hash="s", impl="torch",
          metrics={"test_acc": 0.4})
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "listops / mamba mixes implementations (cuda: 1 run(s), torch: 2 run(s))" in md
    assert "listops / mamba ran on several devices (cpu: 2 run(s), cuda: 1 run(s))" in md
    assert "| cuda, torch |" in md  # the cell's impl column shows both
    assert "listops / mamba / spt [g-defaul] pools runs of several code versions (?, abc)" in md


@pytest.mark.slow
def test_single_seed_and_undefined_gap_closed_are_said_not_nan(tmp_path):
    for arch in ("a", "b"):
        write(tmp_path, f"{arch}/sup", arch=arch, recipe="supervised", group_hash=f"{arch}s",
              metrics={"test_acc": 0.5})
        write(tmp_path, f"{arch}/spt", arch=arch, group_hash=f"{arch}p", metrics={"test_acc": 0.6})
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "nan" not in md.lower()
    assert "| a | spt | ap | 1 | 0 | 60.00 | n/a (1 seed) | n/a (1 seed) |" in md
    assert "undefined | – | gap(supervised) is 0: every architecture has the same mean accuracy" in md
    assert "| a | 50.00 | 60.00 | +10.00 | n/a (1 seed) | – | n/a (needs >= 2 seeds per recipe) | n/a |" in md
    write(tmp_path, "c/sup", arch="c", recipe="supervised", group_hash="cs", metrics={"test_acc": 0.3})
    (tmp_path / "a" / "spt" / "result.json").unlink()
    (tmp_path / "b" / "spt" / "result.json").unlink()
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "needs >= 2 architectures run with both supervised and spt (found 0)" in md
    assert "| supervised | a, b, c | a | c | 20.00 | n/a (1 seed) |" in md


def test_hostile_names_are_escaped_in_html(tmp_path):
    hostile = "<script>alert(1)</script>"
    write(tmp_path, "x0", arch=hostile, task='<img src=x onerror="alert(2)">', metrics={"test_acc": 0.5})
    write(tmp_path, "x1", arch=hostile, status="failed", reason="<b>boom</b> & `<i>more</i>`")
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; `&lt;i&gt;more&lt;/i&gt;`" in page
    assert all(p.parent == out for p in out.glob("**/*.png"))  # names never steer where files go


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "no runs (result.json or run folders)" in capsys.readouterr().err


def test_runs_from_different_hardware_are_labelled_and_flagged(tmp_path):
    """result.json's `hardware` names the device, GPU, process count and precision in the accuracy table;
    a cell mixing them is warned about, whatever the device type."""
    gpu = {"device": "cuda", "name": "NVIDIA H100 80GB HBM3", "world_size": 4, "precision": "bf16"}
    write(tmp_path, "h0", seed=0, device="cuda", hardware=gpu, metrics={"test_acc": 0.5})
    write(tmp_path, "h1", seed=1, device="cuda", hardware={**gpu, "world_size": 1, "precision": "fp32"},
          metrics={"test_acc": 0.6})
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| cuda NVIDIA H100 80GB HBM3 x1 fp32, cuda NVIDIA H100 80GB HBM3 x4 bf16 |" in md
    assert ("listops / transformer ran on several devices (cuda NVIDIA H100 80GB HBM3 x1 fp32: 1 run(s), "
            "cuda NVIDIA H100 80GB HBM3 x4 bf16: 1 run(s))") in md


def test_curves_figure_has_a_panel_per_arch_a_colour_per_recipe_and_a_legend_off_the_data():
    """Eight configurations (4 archs x 2 recipes) in one task: one panel per arch, each with its 2 lines;
    a recipe keeps its colour in every panel; the one legend overlaps no panel."""
    from reports import figures

    archs, recipes = ["cnn", "mamba", "s4", "transformer"], ["spt", "supervised"]
    rows = [{"label": f"{a}/{r}", "step": s, "mean": 0.3 + 0.01 * s + 0.1 * i, "std": 0.02, "n": 3}
            for a in archs for i, r in enumerate(recipes) for s in range(1, 11)]
    # A second configuration of one pair (told apart by hash) gets its own line style, not a new colour.
    rows += [{"label": "s4/spt [abc123]", "step": s, "mean": 0.5, "std": float("nan"), "n": 1} for s in range(1, 11)]
    fig = figures.curves_figure("listops", pd.DataFrame(rows))
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == archs
    colour = {}
    for ax in panels:
        lines = {line.get_label(): line for line in ax.get_lines()}
        expected = {"spt", "supervised"} | ({"s4/spt [abc123]"} if ax.get_title() == "s4" else set())
        assert set(lines) == expected
        for label, line in lines.items():
            colour.setdefault(label.split("/")[-1].split(" [")[0], set()).add(line.get_color())
        if ax.get_title() == "s4":
            assert lines["s4/spt [abc123]"].get_color() == lines["spt"].get_color()
            assert lines["s4/spt [abc123]"].get_linestyle() != lines["spt"].get_linestyle()
    assert all(len(c) == 1 for c in colour.values()) and colour["spt"] != colour["supervised"]
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert [t.get_text() for t in legend.get_texts()] == ["supervised", "spt", "s4/spt [abc123]"]  # recipe order
    assert not any(box.overlaps(ax.get_window_extent()) for ax in panels)
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[-1])  # the same accuracy scale in each panel
    import matplotlib.pyplot as plt

    plt.close(fig)
