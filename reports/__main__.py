"""python -m reports RUNS_DIR [-o OUT_DIR]: results.csv (one row per run) and summary.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports import duplicates, load_results, summarize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: RUNS_DIR)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder of runs", file=sys.stderr)
        return 2
    df = load_results(args.runs_dir)
    if df.empty:
        print(f"error: no result.json under {args.runs_dir}; run `python run.py ...` first", file=sys.stderr)
        return 2
    out = args.out or args.runs_dir
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "results.csv", index=False)
    table = summarize(df)
    lines = ["# sptbench summary", "", f"{len(df)} runs: {int((df['status'] == 'ok').sum())} ok, "
             f"{int((df['status'] != 'ok').sum())} not ok (excluded from means).", ""]
    copies = duplicates(df)
    if not copies.empty:
        lines += [f"{len(copies)} run(s) repeat a configuration found in another folder and count once:",
                  *(f"- {p}" for p in copies.path), ""]
    if not table.empty:
        table["test_acc"] = [f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}"
                             for m, s, n in zip(table.test_acc_mean, table.test_acc_std, table.n)]
        cols = ["task", "arch", "recipe", "n", "test_acc", "val_acc_mean", "params", "pretrain_steps",
                "finetune_steps", "compute_s", "group_hash"]
        lines += [markdown(table[cols]), "", "test_acc: mean ± sample std over seeds; val_acc_mean: mean over seeds; "
                  "compute_s: mean seconds over all stages (a reused pretraining counts what it cost)."]
    bad = df[df["status"] != "ok"]
    if not bad.empty:
        lines += ["", "## Runs not ok", *(f"- {p}: {s} — {r}" for p, s, r in zip(bad.path, bad.status, bad.reason))]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    return 0


def markdown(df) -> str:
    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    body = ([cell(v) for v in row] for row in df.itertuples(index=False))
    rows = [list(df.columns), ["---"] * len(df.columns), *body]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


if __name__ == "__main__":
    sys.exit(main())
