"""Hyperparameter selection on validation (reports/select.py) and the Convergence section, from hand-made
result.json files: the configuration with the best mean validation accuracy is kept per cell (not the
best-test one), every table is computed from it alone, test accuracy never changes the choice, the tie
rule, a choice per study-axis value, search keys stored or from --search, and `stopping` per stage."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from reports.__main__ import main
from tests.test_report_study import section
from tests.test_reports import SEED, B, same, table_row, write

ARCHS = ("cnn", "transformer")
FT_LRS = (1e-3, 3e-4)
PT_LRS = (1e-3, 1e-4)
NOISE = (0.0, 0.01, -0.005)  # per seed, the same in every configuration, so orders hold seed by seed
# Offsets (val, test) per configuration: the best on validation is never the best on test.
SPT = {(1e-3, 1e-3): (0.00, 0.03), (1e-3, 1e-4): (0.04, 0.01), (3e-4, 1e-3): (0.02, 0.08), (3e-4, 1e-4): (0.01, 0.03)}
SUPERVISED = {1e-3: (0.03, 0.00), 3e-4: (0.00, 0.06)}
CHOSEN = {"spt": (1e-3, 1e-4), "supervised": (1e-3,)}
RUN = ["--bootstrap", str(B), "--seed", str(SEED)]


def ghash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def cfg(seed: int, arch: str, recipe: str, ft_lr: float, pt_lr: float = 1e-3, search=("finetune.lr", "pretrain.lr"),
        **task) -> dict:
    out = {"seed": seed, "out_root": "runs", "finetune": {"lr": ft_lr, "weight_decay": 0.01},
           "pretrain": {"lr": pt_lr}, "task": {"name": "listops", **task}, "arch": {"name": arch},
           "recipe": {"name": recipe}}
    if search is not None:
        out["search"] = list(search)
    return out


def make_grid(root, test=lambda acc: acc) -> dict:
    """listops, 2 archs; spt over finetune.lr × pretrain.lr, supervised over finetune.lr (its runs at both
    pretrain.lr are one configuration: pretrain.* is not part of it); 3 seeds. -> {(arch, recipe, lrs):
    (vals, tests)}."""
    accs = {}
    for i, arch in enumerate(ARCHS):
        for recipe, grid in (("spt", SPT), ("supervised", SUPERVISED)):
            for lrs, (v_off, t_off) in grid.items():
                lrs = lrs if isinstance(lrs, tuple) else (lrs,)
                base = 0.5 + 0.1 * i + (0.05 if recipe == "spt" else 0)
                vals = [round(base + v_off + n, 4) for n in NOISE]
                tests = [round(test(base + t_off + n), 4) for n in NOISE]
                accs[(arch, recipe, lrs)] = (vals, tests)
                group = ghash(f"{arch}-{recipe}-{lrs}")
                for pt_lr in (lrs[1],) if recipe == "spt" else PT_LRS:
                    for seed in range(3):
                        write(root, f"{arch}/{recipe}/ft{lrs[0]}/pt{pt_lr}/seed{seed}", arch=arch, recipe=recipe,
                              seed=seed, group_hash=group, config_hash=f"{group}-{seed}",
                              metrics={"test_acc": tests[seed], "val_acc": vals[seed]},
                              config=cfg(seed, arch, recipe, lrs[0], pt_lr))
    return accs


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    accs = make_grid(root)
    out = root / "out"
    assert main([str(root), "-o", str(out), *RUN]) == 0
    return root, out, accs, (out / "report.md").read_text()


@pytest.mark.slow
def test_best_validation_is_kept_and_every_table_uses_it(grid):
    root, out, accs, md = grid
    task = section(md, "## Task: listops", "\n## ")
    for arch in ARCHS:
        for recipe, lrs in CHOSEN.items():
            vals, tests = accs[(arch, recipe, lrs)]
            best_test = max(accs[k][1] for k in accs if k[:2] == (arch, recipe))
            assert np.mean(best_test) > np.mean(tests)  # the construction: another configuration wins on test
            group = ghash(f"{arch}-{recipe}-{lrs}")
            same(table_row(task, arch, recipe, group[:8]), "3", "0, 1, 2", float(np.mean(tests)),
                 float(np.std(tests, ddof=1)))
        # The gain is between the chosen configurations, as if the others had not run.
        spt, sup = (np.mean(accs[(arch, r, CHOSEN[r])][1]) for r in ("spt", "supervised"))
        same(table_row(section(task, "### spt gain per architecture"), arch)[2:], float(spt - sup))
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 4
    for r in cells.itertuples():
        assert np.isclose(r.mean, np.mean(accs[(r.arch, r.recipe, CHOSEN[r.recipe])][1]))
    # The configurations not chosen are neither "not ok" nor "several configurations".
    assert ("48 runs: 12 counted, 30 in configurations not selected on validation (see Hyperparameter selection), "
            "6 repeating a configuration already counted, 0 not ok") in md
    assert "## Warnings" not in md and "several configurations" not in md and "## Runs not counted" not in md
    results = pd.read_csv(out / "results.csv")
    assert results.selected.sum() == 18 and results.counted.sum() == 12 and not results.selected.isna().any()


@pytest.mark.slow
def test_selection_section_and_csv(grid):
    root, out, accs, md = grid
    text = section(md, "## Hyperparameter selection", "\n## ")
    assert "best mean validation accuracy" in text and "Test accuracy is never consulted" in text
    assert "listed in the runs' stored config (`search`)" in text and "listops: finetune.lr, pretrain.lr" in text
    assert table_row(text, "listops", "–", "cnn", "spt") == ["0.001", "0.0001", ghash("cnn-spt-(0.001, 0.0001)")[:8]]
    assert table_row(text, "listops", "–", "cnn", "supervised")[:2] == ["0.001", "–"]  # pretrain.lr: unused
    grids = section(text, "### listops: configurations compared on validation")
    for arch in ARCHS:
        for ft, pt in SPT:
            vals = accs[(arch, "spt", (ft, pt))][0]
            row = table_row(grids, arch, "spt", str(ft), str(pt))
            assert row[1] == "3" and row[-1] == ("✓ selected" if (ft, pt) == CHOSEN["spt"] else "")
            assert row[2] == f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals, ddof=1):.2f}"
        # Supervised: 2 configurations, not 4 — pretrain.lr does not split them.
        assert [table_row(grids, arch, "supervised", str(ft), "–")[-1] for ft in FT_LRS] == ["✓ selected", ""]
    sel = pd.read_csv(out / "selection.csv")
    assert list(sel.columns) == ["task", "axis", "value", "arch", "recipe", "group_hash", "finetune.lr", "pretrain.lr",
                                 "n", "val_acc_mean", "val_acc_std", "val_acc_per_seed", "selected"]
    assert len(sel) == 12 and sel.selected.sum() == 4 and (sel.n == 3).all()
    assert set(sel[sel.recipe == "supervised"]["pretrain.lr"]) == {"<unused>"}


@pytest.mark.slow
def test_test_accuracy_never_changes_the_choice(grid, tmp_path):
    root, out, accs, md = grid
    make_grid(tmp_path, test=lambda acc: 1.2 - acc)  # test accuracies reversed, validation untouched
    other = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(other), *RUN]) == 0
    assert (other / "selection.csv").read_bytes() == (out / "selection.csv").read_bytes()
    strip = lambda t: section(t, "## Hyperparameter selection", "\n## ")  # noqa: E731
    assert strip((other / "report.md").read_text()) == strip(md)


@pytest.mark.slow
def test_tie_rule(tmp_path):
    """Equal mean val: more seeds wins, even with the larger lr; equal seeds too: the smaller value of the
    keys in the order declared (means equal up to float rounding tie)."""
    cases = {"cnn": {1e-3: [0.7, 0.7, 0.7], 3e-4: [0.7, 0.7]},                         # more seeds
             "s4": {1e-3: [0.1, 0.1, 0.4], 3e-4: [0.1, 0.4, 0.1]},                       # float tie: smaller lr
             "transformer": {(1e-3, 0.0): [0.5, 0.6], (3e-4, 0.1): [0.6, 0.5]}}          # first key decides
    for arch, configs in cases.items():
        for lrs, vals in configs.items():
            ft, wd = lrs if isinstance(lrs, tuple) else (lrs, 0.01)
            for seed, v in enumerate(vals):
                c = cfg(seed, arch, "supervised", ft, search=("finetune.lr", "finetune.weight_decay"))
                c["finetune"]["weight_decay"] = wd
                write(tmp_path, f"{arch}/{ft}/{wd}/{seed}", arch=arch, recipe="supervised", seed=seed,
                      group_hash=ghash(f"{arch}{ft}{wd}"), metrics={"test_acc": 0.5, "val_acc": v}, config=c)
    # The construction: equal only up to float rounding, the larger lr ahead in the last bit.
    assert pd.Series([0.1, 0.1, 0.4]).mean() > pd.Series([0.1, 0.4, 0.1]).mean()
    out = tmp_path / "out"

    def chosen(*extra) -> dict:
        assert main([str(tmp_path), "-o", str(out), *RUN, *extra]) == 0
        sel = pd.read_csv(out / "selection.csv")
        return {r["arch"]: (r["finetune.lr"], r["finetune.weight_decay"]) for r in sel[sel.selected].to_dict("records")}

    assert chosen() == {"cnn": (1e-3, 0.01), "s4": (3e-4, 0.01), "transformer": (3e-4, 0.1)}
    # Declared the other way round, weight decay decides first.
    assert chosen("--search", "finetune.weight_decay,finetune.lr")["transformer"] == (1e-3, 0.0)
    md = (out / "report.md").read_text()
    assert "declared with `--search`" in md and "listops: finetune.weight_decay, finetune.lr" in md


KEY = "task.train_fraction"


@pytest.mark.slow
def test_choice_per_axis_value_and_the_axis_is_still_detected(tmp_path):
    """The best lr on validation is 3e-4 at fraction 0.1 and 1e-3 at 1.0; the axis is the fraction."""
    accs = {}
    for f in (0.1, 1.0):
        for i, arch in enumerate(ARCHS):
            for recipe in ("supervised", "spt"):
                for ft in FT_LRS:
                    good = (ft == 3e-4) == (f == 0.1)
                    vals = [round(0.6 + 0.1 * f + 0.05 * i + (0.03 if good else 0) + n, 4) for n in NOISE]
                    tests = [round(v + (-0.1 if good else 0.1), 4) for v in vals]  # the other lr is best on test
                    accs[(f, arch, recipe, ft)] = tests
                    for seed in range(3):
                        write(tmp_path, f"{f}/{arch}/{recipe}/{ft}/{seed}", arch=arch, recipe=recipe, seed=seed,
                              group_hash=ghash(f"{f}{arch}{recipe}{ft}"),
                              metrics={"test_acc": tests[seed], "val_acc": vals[seed]},
                              config=cfg(seed, arch, recipe, ft, search=("finetune.lr",), train_fraction=f))
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out), *RUN]) == 0
    md = (out / "report.md").read_text()
    along = section(md, f"### Along the study axis {KEY}", "\n## ")
    assert "Detected:" in along and "Values: 0.1, 1." in along and "## Warnings" not in md
    for arch in ARCHS:
        for recipe in ("supervised", "spt"):
            cells = table_row(section(along, "n seeds."), arch, recipe)
            same(cells[0:1], float(np.mean(accs[(0.1, arch, recipe, 3e-4)])))
            same(cells[3:4], float(np.mean(accs[(1.0, arch, recipe, 1e-3)])))
    sel = pd.read_csv(out / "selection.csv", dtype={"value": str})
    chosen = sel[sel.selected]
    assert (chosen.axis == KEY).all() and len(chosen) == 8
    assert set(chosen[chosen.value == "0.1"]["finetune.lr"]) == {3e-4}
    assert set(chosen[chosen.value == "1"]["finetune.lr"]) == {1e-3}
    assert table_row(section(md, "## Hyperparameter selection"), "listops", f"{KEY}=0.1", "cnn", "spt")[0] == "0.0003"
    # Without search keys the lr is one more varying setting: no axis, as before.
    assert main([str(tmp_path), "-o", str(out), "--search", ""]) == 0
    md = (out / "report.md").read_text()
    assert "differ in 2 settings (finetune.lr, task.train_fraction)" in md and "Hyperparameter selection" not in md


@pytest.mark.slow
def test_search_keys_from_the_command_line_and_bad_ones(tmp_path, capsys):
    for ft in FT_LRS:
        for seed in range(2):
            write(tmp_path, f"{ft}/{seed}", seed=seed, group_hash=ghash(str(ft)),
                  metrics={"test_acc": 0.5, "val_acc": 0.6 if ft == 3e-4 else 0.5},
                  config=cfg(seed, "transformer", "spt", ft, search=None))  # runs from before `search`
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out)]) == 0  # no stored search keys: two configurations, as before
    md = (out / "report.md").read_text()
    assert "Hyperparameter selection" not in md and "reported apart and left out of gaps and gains" in md
    assert not (out / "selection.csv").exists()
    assert main([str(tmp_path), "-o", str(out), "--search", "finetune.lr"]) == 0
    md = (out / "report.md").read_text()
    assert "## Warnings" not in md and "declared with `--search`" in md
    assert table_row(section(md, "## Hyperparameter selection"), "listops", "–", "transformer", "spt")[0] == "0.0003"
    for key, why in (("finetune.lrr", "is a setting of no counted run's stored config (did you mean finetune.lr?)"),
                     ("seed", "cannot be a search key")):
        bad = tmp_path / f"bad_{key}"
        assert main([str(tmp_path), "-o", str(bad), "--search", f"finetune.lr,{key}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --search {key} ") and why in err and err.count("\n") == 1, err
        assert not bad.exists()
    # A stored key that no config has is the same error.
    write(tmp_path, "odd/0", seed=5, group_hash="odd", metrics={"test_acc": 0.5, "val_acc": 0.5},
          config=cfg(5, "transformer", "spt", 1e-3, search=("finetune.betas",)))
    assert main([str(tmp_path), "-o", str(tmp_path / "bad")]) == 2
    assert "search key (from the runs' stored config `search`) finetune.betas" in capsys.readouterr().err


def stop(steps, best, reason, converged, cap=1000, spe=10) -> dict:
    return {"cap": cap, "steps": steps, "best_step": best, "reason": reason, "patience": 3, "eval_every": 10,
            "steps_per_epoch": spe, "epochs": steps / spe, "converged": converged}


def test_convergence_section(tmp_path):
    ok = [stop(300, 270, "patience", True), stop(400, 370, "patience", True), stop(500, 470, "patience", True)]
    runs = {("cnn", "supervised"): [{"finetune": s} for s in ok],
            ("transformer", "supervised"): [{"finetune": ok[0]}, {"finetune": ok[1]},
                                            {"finetune": stop(1000, 990, "cap", False)}],
            ("transformer", "spt"): [{"finetune": s, "pretrain": stop(2000, 1990, "cap", False, cap=2000)}
                                     for s in ok[:2]],
            ("cnn", "spt"): [None, {"finetune": "junk"}, {"finetune": {"steps": "many", "converged": "yes"}}]}
    for (arch, recipe), stops in runs.items():
        for seed, s in enumerate(stops):
            fields = {} if s is None else {"stopping": s}
            write(tmp_path, f"{arch}/{recipe}/{seed}", arch=arch, recipe=recipe, seed=seed,
                  group_hash=f"{arch}-{recipe}",
                  metrics={"test_acc": 0.6, "val_acc": 0.6, **({"pretrain_val_acc": 0.3} if recipe == "spt" else {})},
                  baselines={"unigram": {"val_acc": 0.15}}, **fields)
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out), *RUN]) == 0
    md = (out / "report.md").read_text()
    text = section(md, "## Convergence", "\n## ")
    assert table_row(text, "listops", "–", "cnn", "supervised", "cnn-supe") == [
        "3 of 3", "400 (300–500) / 1000", "40.00 (30.00–50.00)", "3 patience", "370 (270–470)", "–", "–", "–", "–",
        "–", "–", "yes"]
    row = table_row(text, "listops", "–", "transformer", "supervised", "transfor")
    assert [row[1], row[3], row[-1]] == ["567 (300–1000) / 1000", "1 cap, 2 patience",
                                         "not converged (fine-tuning: seed 2)"]
    spt = table_row(text, "listops", "–", "transformer", "spt", "transfor")
    assert spt[5:] == ["2000 / 2000", "200.00", "2 cap", "1990", "30.00", "15.00",
                       "not converged (pretraining: seeds 0, 1)"]
    assert table_row(text, "listops", "–", "cnn", "spt", "cnn-spt")[0] == "0 of 3"
    assert table_row(text, "listops", "–", "cnn", "spt", "cnn-spt")[-1] == "unknown"
    warning = [line for line in section(md, "## Warnings", "\n## ").splitlines() if "Not converged" in line]
    assert len(warning) == 1 and warning[0].endswith("listops / transformer / spt (pretraining: seeds 0, 1), "
                                                     "listops / transformer / supervised (fine-tuning: seed 2)")
    cells = pd.read_csv(out / "cells.csv").set_index(["arch", "recipe"])
    assert cells.converged.to_dict() == {("cnn", "spt"): "unknown", ("cnn", "supervised"): "yes",
                                         ("transformer", "spt"): "no", ("transformer", "supervised"): "no"}
    assert cells.loc[("transformer", "supervised"), "finetune_by_cap"] == 1
    results = pd.read_csv(out / "results.csv")
    assert results.finetune_converged.notna().sum() == 8 and "pretrain_stop" in results


def test_grid_shows_each_seed_and_marks_one_that_never_left_the_majority_class(tmp_path):
    """A seed that early stopping ended at the majority class drags its configuration's mean down: the grid
    shows every seed's validation accuracy and marks that one, so a reader sees what the choice stood on."""
    floors = {"majority": {"val_acc": 0.1, "test_acc": 0.1}}
    for lr, vals in ((1e-3, (0.9, 0.88, 0.1)), (1e-2, (0.8, 0.79, 0.81))):
        group = ghash(f"lr{lr}")
        for seed, val in enumerate(vals):
            write(tmp_path, f"lr{lr}/seed{seed}", recipe="supervised", seed=seed, group_hash=group,
                  config_hash=f"{group}-{seed}", metrics={"test_acc": 0.5, "val_acc": val}, baselines=floors,
                  config=cfg(seed, "transformer", "supervised", lr, search=("finetune.lr",)))
    out = tmp_path / "out"
    assert main([str(tmp_path), "-o", str(out), *RUN]) == 0
    grid = section((out / "report.md").read_text(), "configurations compared on validation", "\n## ")
    assert table_row(grid, "transformer", "supervised", "0.001")[-2:] == ["90.00, 88.00, 10.00*", ""]
    assert table_row(grid, "transformer", "supervised", "0.01")[-2:] == ["80.00, 79.00, 81.00", "✓ selected"]
    assert "* a seed whose best validation accuracy is not above the majority class" in grid
    assert pd.read_csv(out / "selection.csv").val_acc_per_seed.str.endswith("*").sum() == 1
