"""The report's Locality section (result.json `probes`): every number checked against values computed
here with numpy/scipy from hand-made probes — means and bootstrap CIs over seeds per cell and stage, the
head and layer means of attention, Δlocality and the gain per (arch, axis value), their Pearson and
Spearman r; locality.csv; the figures; runs without probes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from reports.__main__ import main
from tests.test_report_study import config, section
from tests.test_reports import SEED, B, ci, table_row, write

KEY = "task.train_fraction"
FRACTIONS = (0.1, 0.3, 1.0)
SHOWN = ("0.1", "0.3", "1")
ARCHS = ("cnn", "transformer")  # transformer: the attention backbone
RECIPES = ("supervised", "spt", "supervised_matched")
OFFSETS = list(range(-60, 61))


def boot(values, key):
    """The documented resampling (tests.test_reports.boot) of a probe measure: key
    'task|arch|recipe|group_hash|stage|measure|layer'."""
    from tests.test_reports import boot as resample
    return resample(values, key)


def stages_of(recipe):
    return ("init", "pretrained", "finetuned") if recipe == "spt" else ("init", "finetuned")


def probe_values(rng, f, i, recipe, stage):
    """Known, distinct probe numbers for one run and stage."""
    shift = {"init": 0.0, "pretrained": 2.0, "finetuned": 4.0}[stage] * (1 + {"supervised": 0, "spt": 0.5,
                                                                                "supervised_matched": 0.2}[recipe])
    centre = 10 + 3 * i + 5 * f + shift
    offdiag = round(float(centre + rng.normal(0, 0.7)), 4)
    # Attention: 2 layers x 2 heads, values per head.
    def heads(f):
        return [[round(float(f(layer, h)), 4) for h in range(2)] for layer in range(2)]

    distance = heads(lambda layer, h: centre / (layer + 1) + h + rng.normal(0, 0.5))
    entropy = heads(lambda layer, h: 1 + 0.1 * layer + 0.05 * h + rng.normal(0, 0.02))
    share = heads(lambda layer, h: 0.3 + 0.05 * layer + 0.02 * h + rng.normal(0, 0.01))
    width = 3 + 2 * i + (stage == "finetuned") * (recipe == "spt")
    prof = [float(np.exp(-abs(k) / width)) for k in OFFSETS]
    return {"offdiag": offdiag, "mean": round(offdiag * 0.8, 4), "half": int(centre // 2), "distance": distance,
            "entropy": entropy, "share": share, "profile": prof}


def stage_json(v, attention: bool) -> dict:
    out = {"influence": {"offsets": OFFSETS, "profile": v["profile"], "mean_distance": v["mean"],
                         "mean_distance_offdiag": v["offdiag"], "half_mass_distance": v["half"], "n_positions": 128}}
    if attention:
        out["attention"] = {"distance": v["distance"], "entropy": v["entropy"], "local_share": v["share"],
                            "window": 8, "n_queries": 2345}
    return out


SETTINGS = {"n_examples": 32, "positions": 4, "directions": None, "window": 8, "seed": 0, "split": "val"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """listops, 2 archs x 3 recipes x 3 train fractions x 3 seeds with probes, and one more seed of
    cnn/supervised at 0.1 without probes (counted in accuracy, not in locality)."""
    root = tmp_path_factory.mktemp("locality")
    rng = np.random.default_rng(11)
    accs, probes = {}, {}
    for f in FRACTIONS:
        for i, arch in enumerate(ARCHS):
            for recipe in RECIPES:
                n_seeds = 4 if (f, arch, recipe) == (0.1, "cnn", "supervised") else 3
                centre = 0.4 + 0.1 * f + 0.05 * i + {"supervised": 0, "spt": 0.03 * (1 + i) * f,
                                                      "supervised_matched": 0.01}[recipe]
                accs[(f, arch, recipe)] = values = np.round(centre + rng.normal(0, 0.02, n_seeds), 4).tolist()
                for seed, acc in enumerate(values):
                    fields = {}
                    if seed < 3:
                        found = {s: probe_values(rng, f, i, recipe, s) for s in stages_of(recipe)}
                        probes[(f, arch, recipe, seed)] = found
                        fields["probes"] = {"settings": SETTINGS, "wall_time_s": 1.0,
                                            "stages": {s: stage_json(v, arch == "transformer")
                                                       for s, v in found.items()}}
                    write(root, f"{f}/{arch}/{recipe}/seed{seed}", arch=arch, recipe=recipe, seed=seed,
                          group_hash=f"{arch}-{recipe}-{f}", metrics={"test_acc": acc, "val_acc": acc},
                          config=config(seed, arch, recipe, train_fraction=f), **fields)
    out = root / "out"
    assert main([str(root), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    md = (out / "report.md").read_text()
    return root, out, accs, probes, md, section(md, "### Locality", "\n## ")


def measure(probes, f, arch, recipe, stage, what, layer=None) -> np.ndarray:
    """The three seeds' values of one measure as the report must compute them (head mean per layer,
    then the mean over layers for layer 'mean')."""
    vals = []
    for seed in range(3):
        v = probes[(f, arch, recipe, seed)][stage][what]
        if layer is not None:
            per_layer = [np.mean(heads) for heads in v]
            v = np.mean(per_layer) if layer == "mean" else per_layer[layer]
        vals.append(v)
    return np.array(vals, dtype=float)


def key(f, arch, recipe, stage, m, layer=""):
    return f"listops|{arch}|{recipe}|{arch}-{recipe}-{f}|{stage}|{m}|{layer}"


def close(cell: str, want: float, digits: int = 2) -> None:
    assert abs(float(cell) - want) <= 0.5 * 10 ** -digits + 1e-9, (cell, want)


def check(cells: list[str], mean: float, interval: tuple, n=None, digits: int = 2) -> None:
    close(cells[0], mean, digits)
    lo, hi = cells[1].strip("[]").split(", ")
    close(lo, interval[0], digits)
    close(hi, interval[1], digits)
    if n is not None:
        assert cells[2] == str(n), cells


@pytest.mark.slow
def test_influence_tables_mean_and_ci_per_stage_and_axis_value(study):
    root, out, accs, probes, md, text = study
    assert "Locality" in md and text.startswith("\n\n54 of 55 counted runs carry probes")
    assert "1 without them are left out of this section" in text
    headline = section(text, "Influence: off-diagonal", "Influence with k = 0")
    rest = section(text, "Influence with k = 0", "Attention distance per layer")
    for j, f in enumerate(FRACTIONS):
        for arch in ARCHS:
            for recipe in RECIPES:
                for stage in stages_of(recipe):
                    v = measure(probes, f, arch, recipe, stage, "offdiag")
                    b = boot(v, key(f, arch, recipe, stage, "influence.mean_distance_offdiag"))
                    check(table_row(headline, arch, recipe, stage)[3 * j:], v.mean(), ci(b), 3)
                    m = measure(probes, f, arch, recipe, stage, "mean")
                    h = measure(probes, f, arch, recipe, stage, "half")
                    cells = table_row(rest, arch, recipe, stage)[4 * j:]
                    check(cells[:2], m.mean(), ci(boot(m, key(f, arch, recipe, stage, "influence.mean_distance"))))
                    check(cells[2:4], h.mean(), ci(boot(h, key(f, arch, recipe, stage,
                                                                "influence.half_mass_distance"))))
    # Only spt has a pretrained stage.
    assert "| cnn | supervised | pretrained |" not in headline and "| cnn | spt | pretrained |" in headline


@pytest.mark.slow
def test_attention_per_layer_head_mean_and_layer_mean(study):
    root, out, accs, probes, md, text = study
    dist = section(text, "Attention distance per layer", "Attention entropy")
    compact = section(text, "Attention entropy", "Change in locality")
    assert "| cnn |" not in dist and "| cnn |" not in compact  # no attention in a CNN
    for j, f in enumerate(FRACTIONS):
        for recipe in RECIPES:
            for stage in stages_of(recipe):
                for layer in (0, 1, "mean"):
                    v = measure(probes, f, "transformer", recipe, stage, "distance", layer)
                    b = boot(v, key(f, "transformer", recipe, stage, "attention.distance", layer))
                    check(table_row(dist, "transformer", recipe, stage, str(layer))[3 * j:], v.mean(), ci(b), 3)
                    cells = table_row(compact, "transformer", recipe, stage, str(layer))[2 * j:]
                    close(cells[0], measure(probes, f, "transformer", recipe, stage, "entropy", layer).mean(), 3)
                    close(cells[1], measure(probes, f, "transformer", recipe, stage, "share", layer).mean(), 3)


def expected_changes(accs, probes, what, layer, archs=ARCHS):
    """Per (arch, fraction): Δ = spt's finetuned − supervised's finetuned mean, its CI, gain, its CI."""
    from tests.test_reports import boot as resample
    m = {"offdiag": "influence.mean_distance_offdiag", "distance": "attention.distance"}[what]
    lay = "" if layer is None else layer
    out = {}
    for f in FRACTIONS:
        for arch in archs:
            spt, sup = (measure(probes, f, arch, r, "finetuned", what, layer) for r in ("spt", "supervised"))
            d_boot = boot(spt, key(f, arch, "spt", "finetuned", m, lay)) - boot(sup, key(f, arch, "supervised",
                                                                                         "finetuned", m, lay))
            a_spt, a_sup = np.array(accs[(f, arch, "spt")]), np.array(accs[(f, arch, "supervised")])
            g_boot = (resample(a_spt, f"listops|{arch}|spt|{arch}-spt-{f}")
                      - resample(a_sup, f"listops|{arch}|supervised|{arch}-supervised-{f}"))
            out[(arch, f)] = (spt.mean() - sup.mean(), ci(d_boot), a_spt.mean() - a_sup.mean(), ci(g_boot))
    return out


@pytest.mark.slow
def test_change_in_locality_gain_and_correlation(study):
    root, out, accs, probes, md, text = study
    change = section(text, "Change in locality", "\n## ")
    influence = expected_changes(accs, probes, "offdiag", None)
    attention = expected_changes(accs, probes, "distance", "mean", ("transformer",))
    for (arch, f), (d, d_ci, g, g_ci) in influence.items():
        cells = table_row(change, arch, SHOWN[FRACTIONS.index(f)])
        check(cells[:2], d, d_ci)
        check(cells[4:6], 100 * g, tuple(100 * x for x in g_ci))  # points, signed
        if arch == "transformer":
            check(cells[2:4], *attention[(arch, f)][:2])
        else:
            assert cells[2:4] == ["–", "–"]
    # The gain of cnn at 0.1 uses all 4 seeds' accuracies (the one without probes too).
    assert len(accs[(0.1, "cnn", "supervised")]) == 4
    d = np.array([v[0] for v in influence.values()])
    g = np.array([v[2] for v in influence.values()])
    r, rho = np.corrcoef(d, g)[0, 1], sps.spearmanr(d, g).statistic
    lower = int((d < 0).sum())
    excl = sum(c[1] < 0 or c[0] > 0 for _, c, _, _ in influence.values())
    assert (f"influence off-diagonal mean distance: spt's finetuned value is lower than supervised's in {lower} of 6 "
            f"cells; the 95% CI of the difference excludes 0 in {excl}. Correlation of Δ with the gain over the 6 "
            f"cells: Pearson r = {r:.2f}, Spearman r = {rho:.2f}.") in change
    da = np.array([v[0] for v in attention.values()])
    ga = np.array([v[2] for v in attention.values()])
    ra, rhoa = np.corrcoef(da, ga)[0, 1], sps.spearmanr(da, ga).statistic
    assert (f"Pearson r = {ra:.2f}, Spearman r = {rhoa:.2f} — with n = 3 cells a correlation cannot mean much."
            in change)


@pytest.mark.slow
def test_locality_csv_one_row_per_cell_stage_measure(study):
    root, out, accs, probes, md, text = study
    csv = pd.read_csv(out / "locality.csv", dtype={"layer": str})
    assert list(csv.columns) == ["task", "axis", "value", "arch", "recipe", "group_hash", "stage", "measure", "layer",
                                 "estimate", "ci_lo", "ci_hi", "n"]
    assert not csv.duplicated(["group_hash", "stage", "measure", "layer"]).any()
    # influence: 3 measures per stage; attention (transformer): 3 measures x (2 layers + mean) per stage.
    stages = sum(len(stages_of(r)) for r in RECIPES) * len(FRACTIONS)
    assert len(csv) == stages * 3 * len(ARCHS) + stages * 9
    row = csv[(csv.group_hash == "transformer-spt-0.3") & (csv.stage == "pretrained")
              & (csv.measure == "attention.local_share") & (csv.layer == "1")]
    v = measure(probes, 0.3, "transformer", "spt", "pretrained", "share", 1)
    assert len(row) == 1 and row.value.iloc[0] == 0.3 and row.n.iloc[0] == 3 and row.axis.iloc[0] == KEY
    assert np.isclose(row.estimate.iloc[0], v.mean())
    assert np.allclose([row.ci_lo.iloc[0], row.ci_hi.iloc[0]],
                       ci(boot(v, key(0.3, "transformer", "spt", "pretrained", "attention.local_share", 1))))


@pytest.mark.slow
def test_locality_figures_are_written_and_embedded(study):
    root, out, accs, probes, md, text = study
    for name in ("locality_influence_listops_0.png", "locality_attention_listops_0.png"):
        png = out / name
        assert png.is_file() and png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list(out.glob("*.png")))


def plain(root, probes_for=lambda arch, recipe, seed: None):
    """A task without a study axis: 2 archs x (supervised, spt) x 2 seeds; probes as probes_for gives them."""
    for arch in ("cnn", "s4"):
        for recipe in ("supervised", "spt"):
            for seed in range(2):
                p = probes_for(arch, recipe, seed)
                write(root, f"{arch}/{recipe}/{seed}", arch=arch, recipe=recipe, seed=seed,
                      group_hash=f"{arch}-{recipe}", metrics={"test_acc": 0.5 + 0.01 * seed + 0.02 * (recipe == "spt")},
                      config=config(seed, arch, recipe), **({"probes": p} if p is not None else {}))
    out = root / "out"
    assert main([str(root), "-o", str(out), "--bootstrap", str(B), "--seed", str(SEED)]) == 0
    return out, (out / "report.md").read_text()


@pytest.mark.slow
def test_runs_without_probes_give_no_section(tmp_path):
    out, md = plain(tmp_path)
    assert "Locality" not in md and not (out / "locality.csv").exists() and not list(out.glob("locality_*"))
    # A second report into the same folder, now with probes, then without: nothing of the first lingers.
    stale = out / "locality_influence_listops_0.png"
    stale.write_bytes(b"old")
    (out / "locality.csv").write_text("old")
    assert main([str(tmp_path), "-o", str(out), "--bootstrap", str(B)]) == 0
    assert not stale.exists() and not (out / "locality.csv").exists()


@pytest.mark.slow
def test_no_axis_two_cells_and_broken_probes(tmp_path):
    """Without an axis: plain columns, 2 cells (correlation undefined), and probes that are partly not numbers,
    not a dict or lack stages are skipped without a crash."""
    def probes_for(arch, recipe, seed):
        if arch == "s4" and seed == 1:
            return {"stages": "oops"} if recipe == "spt" else ["not", "a", "dict"]
        value = 5.0 + seed + 2 * (recipe == "spt") + (arch == "s4")
        inf = {"offsets": [-1, 0, 1], "profile": [0.2, 1.0, 0.1], "mean_distance_offdiag": value,
               "mean_distance": "x", "half_mass_distance": float("nan")}
        return {"settings": SETTINGS, "stages": {"finetuned": {"influence": inf}, "init": None}}

    out, md = plain(tmp_path, probes_for)
    text = section(md, "### Locality", "\n## ")
    assert text.startswith("\n\n6 of 8 counted runs carry probes (result.json `probes`); 2 without them are left out")
    headline = section(text, "Influence: off-diagonal", "Change in locality")
    assert "| arch | recipe | stage | mean | 95% CI | n |" in headline
    assert table_row(headline, "cnn", "supervised", "finetuned") == ["5.50", "[5.00, 6.00]", "2"]
    assert table_row(headline, "s4", "spt", "finetuned") == ["8.00", "n/a (1 seed)", "1"]
    assert "Influence with k = 0" not in text and "Attention distance" not in text
    change = section(text, "Change in locality")
    assert table_row(change, "cnn")[:2] == ["2.00", "[1.00, 3.00]"]
    assert table_row(change, "s4")[:2] == ["2.00", "n/a (1 seed)"]
    assert "over the 2 cells: undefined (needs >= 3 cells with spread in both) — with n = 2 cells" in change
    csv = pd.read_csv(out / "locality.csv")
    assert set(csv.measure) == {"influence.mean_distance_offdiag"} and csv.axis.isna().all()
    assert (out / "locality_influence_listops_0.png").is_file()
    assert not (out / "locality_attention_listops_0.png").exists()
    json.loads((tmp_path / "cnn/spt/0/result.json").read_text())  # the runs are left as written


def test_a_cell_without_finetuned_probes_is_left_out_of_the_change_table(tmp_path):
    def probes_for(arch, recipe, seed):
        inf = {"mean_distance_offdiag": 3.0 + seed + (recipe == "spt")}
        return {"settings": {**SETTINGS, "directions": 8 if seed else None},
                "stages": {"finetuned": {"influence": inf}}} if arch == "cnn" else None

    out, md = plain(tmp_path, probes_for)
    text = section(md, "### Locality", "\n## ")
    assert "directions=8 (2 runs) | null (2 runs), n_examples=32," in text
    change = section(text, "Change in locality")
    assert "Left out, without finetuned probes for both recipes: s4." in change
    assert table_row(change, "cnn")[:2] == ["1.00", "[0.00, 2.00]"] and "| s4 |" not in change
    assert "over the 1 cell: undefined (needs >= 3 cells with spread in both) — with n = 1 cell a" in change
    assert not (out / "locality_influence_listops_0.png").exists()  # no profiles were recorded
