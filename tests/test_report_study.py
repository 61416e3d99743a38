"""Reports along a study axis and against the runs' floors: every number checked against values computed
here, independently (numpy/scipy), from hand-made result.json files; the axis detected or declared;
the order-free and unigram flags; results without baselines; axis.csv; the axis figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports.__main__ import main
from tests.test_reports import SEED, B, boot, ci, same, table_row, write

KEY = "task.train_fraction"
FRACTIONS = (0.1, 1.0)
ARCHS = ("cnn", "transformer")
RECIPES = ("supervised", "spt", "supervised_matched")
ORDER_FREE = {0.1: 0.30, 1.0: 0.35}  # the order-free baseline's test accuracy at each fraction


def baselines(order_free_test: float, unigram: float = 0.155) -> dict:
    return {"n": {"train": 500, "val": 500, "test": 500},
            "majority": {"class": 3, "val_acc": 0.17, "test_acc": 0.168},
            "order_free": {"model": "multinomial logistic regression on token counts", "l2": 0.01,
                           "train_acc": 0.4, "val_acc": order_free_test + 0.004, "test_acc": order_free_test},
            "unigram": {"token": 7, "val_acc": unigram}}


def config(seed: int, arch: str, recipe: str, **task) -> dict:
    return {"seed": seed, "out_root": f"runs/{recipe}", "finetune": {"lr": 0.001},
            "task": {"name": "listops", **task}, "arch": {"name": arch}, "recipe": {"name": recipe}}


def section(md: str, start: str, end: str | None = None) -> str:
    text = md.split(start, 1)[1]
    return text.split(end, 1)[0] if end else text


def welch(treat, base) -> float:
    """Welch's two-sided p by hand: t from the unequal-variance standard error, df by Welch–Satterthwaite."""
    treat, base = np.asarray(treat), np.asarray(base)
    v1, v2 = treat.var(ddof=1) / len(treat), base.var(ddof=1) / len(base)
    t = (treat.mean() - base.mean()) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (len(treat) - 1) + v2**2 / (len(base) - 1))
    return float(2 * sps.t.sf(abs(t), df))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """listops, 2 archs x 3 recipes x 2 train fractions x 3 seeds, with baselines; the report built from it."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(7)
    accs = {}
    for f in FRACTIONS:
        for i, arch in enumerate(ARCHS):
            for recipe in RECIPES:
                centre = 0.45 + 0.1 * f + 0.08 * i + {"supervised": 0, "spt": 0.06, "supervised_matched": 0.02}[recipe]
                accs[(f, arch, recipe)] = values = np.round(centre + rng.normal(0, 0.02, 3), 4).tolist()
                for seed, acc in enumerate(values):
                    metrics = {"test_acc": acc, "val_acc": acc}
                    if recipe == "spt":
                        metrics["pretrain_val_acc"] = 0.2
                    write(root, f"{f}/{arch}/{recipe}/seed{seed}", arch=arch, recipe=recipe, seed=seed,
                          group_hash=f"{arch}-{recipe}-{f}", metrics=metrics, baselines=baselines(ORDER_FREE[f]),
                          config=config(seed, arch, recipe, train_fraction=f))
    out = root / "out"
    assert main([str(root), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    return root, out, accs, (out / "report.md").read_text()


def resamples(accs: dict, f, arch, recipe):
    """A cell's accuracies and its bootstrap means, resampled as the report documents."""
    values = accs[(f, arch, recipe)]
    return np.array(values), boot(values, f"listops|{arch}|{recipe}|{arch}-{recipe}-{f}")


@pytest.mark.slow
def test_axis_is_detected_and_its_tables_match(study):
    root, out, accs, md = study
    text = section(md, f"### Along the study axis {KEY}", "\n## ")
    assert "Detected:" in text and "Values: 0.1, 1." in text
    acc_table = section(text, "n seeds.", "Gap between architectures")
    gap_table = section(text, "Gap between architectures", "Gap closed by spt")
    closed_table = section(text, "Gap closed by spt", "spt − supervised per")
    gain_table = section(text, "spt − supervised per", "spt − supervised_matched per")
    matched_table = section(text, "spt − supervised_matched per")
    for j, f in enumerate(FRACTIONS):
        reps = {(a, r): resamples(accs, f, a, r) for a in ARCHS for r in RECIPES}
        for (arch, recipe), (a, b) in reps.items():
            same(table_row(acc_table, arch, recipe)[3 * j:], a.mean(), ci(b), "3")
        gaps = {}
        for recipe in RECIPES:
            means = np.array([reps[(a, recipe)][0].mean() for a in ARCHS])
            boots = np.stack([reps[(a, recipe)][1] for a in ARCHS])
            gaps[recipe] = (means.max() - means.min(), boots.max(0) - boots.min(0))
            same(table_row(gap_table, recipe)[2 * j:], gaps[recipe][0], ci(gaps[recipe][1]))
        closed = 1 - gaps["spt"][0] / gaps["supervised"][0]
        same(table_row(closed_table, "0.1" if f == 0.1 else "1", "cnn, transformer"), gaps["supervised"][0],
             gaps["spt"][0], closed, ci(1 - gaps["spt"][1] / gaps["supervised"][1]))
        for arch in ARCHS:
            spt = reps[(arch, "spt")]
            for table, base in ((gain_table, "supervised"), (matched_table, "supervised_matched")):
                b = reps[(arch, base)]
                cells = table_row(table, arch)[3 * j:]
                same(cells, spt[0].mean() - b[0].mean(), ci(spt[1] - b[1]))
                assert math.isclose(float(cells[2]), welch(spt[0], b[0]), rel_tol=1e-2), (cells, arch, base)
    # Along an axis the task has a gap-closed row per value in the table of all tasks, and no average.
    overview = section(md, "## Gap closed by spt", "\n## ")
    assert f"| listops ({KEY}=0.1) |" in overview and f"| listops ({KEY}=1) |" in overview
    assert "several configurations" not in md and "## Warnings" not in md


@pytest.mark.slow
def test_axis_csv_holds_the_same_numbers(study):
    root, out, accs, md = study
    csv = pd.read_csv(out / "axis.csv")
    assert set(csv.quantity) >= {"accuracy", "gap", "gap_closed", "gain_vs_supervised", "gain_vs_supervised_matched",
                                 "order_free_test_acc", "unigram_val_acc"}
    assert (csv.task == "listops").all() and (csv.axis == KEY).all()
    for f in FRACTIONS:
        at = csv[np.isclose(csv.value, f)]
        for arch in ARCHS:
            for recipe in RECIPES:
                a, b = resamples(accs, f, arch, recipe)
                row = at[(at.quantity == "accuracy") & (at.arch == arch) & (at.recipe == recipe)]
                assert len(row) == 1 and np.isclose(row.estimate.iloc[0], a.mean())
                assert np.allclose([row.ci_lo.iloc[0], row.ci_hi.iloc[0]], ci(b)) and row.n.iloc[0] == 3
            spt, sup = resamples(accs, f, arch, "spt"), resamples(accs, f, arch, "supervised")
            row = at[(at.quantity == "gain_vs_supervised") & (at.arch == arch)]
            assert np.isclose(row.estimate.iloc[0], spt[0].mean() - sup[0].mean())
            assert np.isclose(row.p.iloc[0], welch(spt[0], sup[0]), rtol=1e-6)
        floor = at[at.quantity == "order_free_test_acc"].estimate
        assert len(floor) == 1 and np.isclose(floor.iloc[0], ORDER_FREE[f])


@pytest.mark.slow
def test_axis_figures_are_written(study):
    root, out, accs, md = study
    for name in ("axis_accuracy_listops_0.png", "axis_effects_listops_0.png"):
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list(out.glob("*.png")))


@pytest.mark.slow
def test_floors_table_per_axis_value(study):
    root, out, accs, md = study
    floors = section(md, "### Floors", "### Accuracy")
    for f, shown in zip(FRACTIONS, ("0.1", "1")):
        same(table_row(floors, shown), "18 of 18", "500/500/500", 0.17, 0.168, ORDER_FREE[f] + 0.004, ORDER_FREE[f],
             0.155)
    # Every cell here is above its order-free floor, and spt's pretraining (0.20) above the unigram floor (0.155).
    assert "0 of 12 cells with a baseline are not above the order-free baseline" in md
    assert "not above the unigram floor" not in md
    pretrain = section(md, "pretraining: masked-token accuracy", "### ")
    same(table_row(pretrain, "cnn", "spt", "cnn-spt-", "0.1"), "3", 0.2, (0.2, 0.2), 0.155, "yes")


@pytest.mark.slow
def test_declared_axis_that_does_not_vary_is_one_error_line(study, capsys):
    root, out, accs, md = study
    for key, why in (("finetune.lr", "does not vary between the configurations of any task (settings that do: "
                                     f"{KEY})"),
                     ("seed", "cannot be a study axis"), ("arch.name", "cannot be a study axis")):
        elsewhere = root / f"bad_{key}"
        assert main([str(root), "-o", str(elsewhere), "--axis", key]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --axis {key} ") and why in err and err.count("\n") == 1, err
        assert not elsewhere.exists()  # nothing written
    declared = root / "declared"
    assert main([str(root), "-o", str(declared), "--axis", KEY, "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    text = (declared / "report.md").read_text()
    assert f"Declared with `--axis {KEY}`." in text
    strip = lambda t: t.split(f"### Along the study axis {KEY}")[1].split("Values:")[1]  # noqa: E731
    assert strip(text) .replace(str(declared), "") == strip(md).replace(str(out), "")


@pytest.mark.slow
def test_order_free_flag_marks_exactly_the_cells_not_above_it(tmp_path):
    """Baseline 0.40: one cell clearly above, one whose CI straddles it, one single seed below it."""
    cells = {("above", "spt"): [0.60, 0.62, 0.64], ("straddle", "spt"): [0.35, 0.45, 0.41],
             ("single", "spt"): [0.38]}
    for (arch, recipe), values in cells.items():
        for seed, acc in enumerate(values):
            pre = {"above": 0.3, "straddle": 0.1, "single": 0.2}[arch]
            write(tmp_path, f"{arch}/{seed}", arch=arch, recipe=recipe, seed=seed, group_hash=f"{arch}-g",
                  metrics={"test_acc": acc, "pretrain_val_acc": pre}, baselines=baselines(0.40, unigram=0.15),
                  config=config(seed, arch, recipe))
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    md = (out / "report.md").read_text()
    lo = {a: ci(boot(v, f"listops|{a}|spt|{a}-g"))[0] for (a, _), v in cells.items() if len(v) > 1}
    assert lo["above"] > 0.40 >= lo["straddle"]  # the construction: one above, one straddling
    no = "no — not above the order-free baseline (40.00): this model has not learned beyond token counts"
    accuracy = section(md, "### Accuracy", "pretraining: masked-token accuracy")
    assert table_row(accuracy, "above", "spt", "above-g")[12] == "yes"
    assert table_row(accuracy, "straddle", "spt", "straddle")[12] == no
    assert table_row(accuracy, "single", "spt", "single-g")[12] == no
    assert "2 of 3 cells with a baseline are not above the order-free baseline" in md
    assert ": single/spt, straddle/spt." in md
    # Pretraining vs the unigram floor (0.15): 0.10 is below, 0.20 and 0.30 above.
    pretrain = section(md, "pretraining: masked-token accuracy", "### ")
    assert table_row(pretrain, "straddle", "spt", "straddle")[-1].startswith("no — not above the unigram floor (15.00)")
    assert table_row(pretrain, "above", "spt", "above-g")[-1] == "yes"
    assert table_row(pretrain, "single", "spt", "single-g")[-1] == "yes (1 seed: its mean)"


def test_missing_or_broken_baselines_show_a_dash(tmp_path):
    write(tmp_path, "old", seed=0, metrics={"test_acc": 0.5})  # written before baselines existed
    write(tmp_path, "junk", seed=1, metrics={"test_acc": 0.6, "pretrain_val_acc": "high"}, baselines="garbage")
    write(tmp_path, "odd", seed=2, metrics={"test_acc": 0.7},
          baselines={"order_free": {"test_acc": 7}, "majority": ["no"], "n": "x"})
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    same(table_row(section(md, "### Floors", "### Accuracy"), "listops"), "0 of 3", "–", "–", "–", "–", "–", "–")
    assert "No order-free baseline in these results" in md
    assert table_row(md, "transformer", "spt", "g-defaul")[12] == "–"
    assert "pretrain masked acc" not in md and "nan" not in md.lower()


def test_runs_that_disagree_on_baselines_are_warned_about(tmp_path):
    for seed, floor in enumerate((0.30, 0.50)):
        write(tmp_path, f"r{seed}", seed=seed, metrics={"test_acc": 0.45}, baselines=baselines(floor))
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert ("listops: runs disagree on their baselines (order_free_val_acc: 30.40, 50.40; order_free_test_acc: "
            "30.00, 50.00), so they did not see the same data") in md
    assert "| 30.00–50.00 (varies, see Warnings) |" in md
    # The cell's own floor is its runs' mean (0.40): a 0.45 mean with no spread has its CI at 0.45, above it.
    assert table_row(md, "transformer", "spt", "g-defaul")[12] == "yes"


def test_compute_matched_gain_table_without_an_axis(tmp_path):
    accs = {"supervised": [0.50, 0.52, 0.55], "supervised_matched": [0.53, 0.56, 0.54], "spt": [0.60, 0.63, 0.61]}
    for recipe, values in accs.items():
        for seed, acc in enumerate(values):
            write(tmp_path, f"{recipe}/{seed}", recipe=recipe, seed=seed, group_hash=recipe,
                  metrics={"test_acc": acc}, config=config(seed, "transformer", recipe))
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    md = (out / "report.md").read_text()
    matched = section(md, "### spt vs supervised_matched (compute-matched)", "\n## ")
    spt, base = np.array(accs["spt"]), np.array(accs["supervised_matched"])
    row = table_row(matched, "transformer")
    same(row, base.mean(), spt.mean(), spt.mean() - base.mean(),
         ci(boot(spt, "listops|transformer|spt|spt") - boot(base, "listops|transformer|supervised_matched|"
                                                              "supervised_matched")))
    assert math.isclose(float(row[5]), welch(spt, base), rel_tol=1e-2)
    assert "Along the study axis" not in md and not (out / "axis.csv").exists()


@pytest.mark.slow
def test_two_varying_settings_are_no_axis(tmp_path):
    """Configurations differing in two settings within several arch × recipe pairs: no axis is guessed, the
    cells stay apart as before, and a warning names the settings and --axis."""
    for arch in ARCHS:
        for f, lr in ((0.1, 0.001), (1.0, 0.01)):
            cfg = config(0, arch, "spt", train_fraction=f)
            cfg["finetune"]["lr"] = lr
            write(tmp_path, f"{arch}/{f}", arch=arch, group_hash=f"{arch}-{f}", metrics={"test_acc": 0.5 + f / 10},
                  config=cfg)
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert ("listops: configurations of several arch × recipe pairs differ in 2 settings (finetune.lr, "
            f"{KEY}), so no study axis was detected; pass --axis KEY") in md
    assert "Along the study axis" not in md and "reported apart and left out of gaps and gains" in md
    # Declared, the axis lays them out; the other setting then leaves each value's cells one configuration each.
    assert main([str(tmp_path), "-o", str(out), "--axis", KEY]) == 0
    assert f"Along the study axis {KEY}" in (out / "report.md").read_text()
