"""The summary reader: numbers computed independently from synthetic result.json files."""

from __future__ import annotations

import json
import statistics

from reports import load_results, summarize
from reports.__main__ import main


def write(root, name, **fields):
    path = root / name / "result.json"
    path.parent.mkdir(parents=True)
    base = {"task": "listops", "arch": "transformer", "recipe": "spt", "seed": 0, "status": "ok",
            "group_hash": "g1", "params": {"total": 10}, "steps": {"finetune": 5},
            "wall_time_s": {"pretrain": 2.0, "finetune": 1.0, "total": 1.5}}
    path.write_text(json.dumps({**base, "config_hash": name, **fields}))


def test_summary_means_and_stds_and_exclusions(tmp_path):
    accs = [0.5, 0.6, 0.8]
    for seed, acc in enumerate(accs):
        metrics = {"test_acc": acc, "val_acc": acc - 0.1}
        write(tmp_path, f"spt{seed}", seed=seed, config_hash=f"c{seed}", metrics=metrics)
    write(tmp_path, "sup0", recipe="supervised", metrics={"test_acc": 0.3, "val_acc": 0.2})
    write(tmp_path, "other", seed=5, group_hash="g2", metrics={"test_acc": 0.99, "val_acc": 0.9})  # other config
    write(tmp_path, "failed", status="failed", reason="non-finite loss at step 3")
    write(tmp_path, "copy_of_spt0", seed=0, config_hash="c0", metrics={"test_acc": 0.5, "val_acc": 0.4})
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "result.json").write_text("{not json")
    df = load_results(tmp_path)
    assert len(df) == 8 and set(df.status) == {"ok", "failed", "unreadable"}
    table = summarize(df).set_index(["recipe", "group_hash"])
    spt = table.loc[("spt", "g1")]
    assert spt.n == 3  # the copy of seed 0 in another folder is not a fourth seed
    assert abs(spt.test_acc_mean - statistics.mean(accs)) < 1e-12
    assert abs(spt.test_acc_std - statistics.stdev(accs)) < 1e-12
    assert table.loc[("spt", "g2")].n == 1  # never pooled with g1
    assert table.loc[("supervised", "g1")].test_acc_mean == 0.3
    assert spt.compute_s == 3.0  # pretrain + finetune, whatever this process's own total was

    assert main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "8 runs: 6 ok, 2 not ok" in summary and "non-finite loss at step 3" in summary
    assert "1 run(s) repeat a configuration" in summary
    from reports import duplicates

    (copy,) = duplicates(df).path
    assert copy.endswith(("/spt0", "/copy_of_spt0")) and f"- {copy}\n" in summary
    assert f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}" in summary


def test_empty_folder_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "no result.json" in capsys.readouterr().err
