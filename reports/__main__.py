"""python -m reports RUNS_DIR [-o OUT_DIR] [--axis KEY] [--search KEYS]: report.md, report.html (figures
embedded), results.csv (one row per run), cells.csv (one row per configuration), curves.csv (validation
curves over seeds), axis.csv (numbers along a study axis), locality.csv (locality probes, when runs carry
them), selection.csv (configurations compared on validation, with search keys) and the figures as PNG.

A task's study axis (e.g. task.train_fraction) is detected when exactly one setting differs between
its configurations (reports/axis.py); --axis KEY declares it. A KEY that varies in no task, or names
a seed, arch.* or recipe.* setting, is an error (exit 2, nothing written).

Search keys (e.g. finetune.lr,pretrain.lr: settings a sweep searched over) come from the runs' stored
config `search`; --search KEYS replaces them. Of each grid of configurations differing only in them, the
report keeps the one with the best mean validation accuracy and computes everything from it
(reports/select.py). A key no run's config has is an error (exit 2, nothing written)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from reports.axis import AxisError
from reports.build import NoRuns, build
from reports.select import SearchError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("runs_dir", type=Path, help="folder searched (recursively) for result.json files")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output folder (default: RUNS_DIR/report)")
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed; the same seed gives the same report")
    parser.add_argument("--axis", default=None, metavar="KEY",
                        help="config key to lay cells out along, e.g. task.train_fraction (default: detected)")
    parser.add_argument("--search", default=None, metavar="KEYS",
                        help="comma-separated search keys, e.g. finetune.lr,pretrain.lr: replaces the keys stored in "
                        "the runs' config (`search`); '' turns selection off (default: the stored keys)")
    args = parser.parse_args(argv)
    if not args.runs_dir.is_dir():
        print(f"error: {args.runs_dir} is not a folder; pass the folder that holds your runs (e.g. runs)",
              file=sys.stderr)
        return 2
    if args.bootstrap < 100:
        print(f"error: --bootstrap={args.bootstrap} is too few resamples for a 95% CI; use >= 100", file=sys.stderr)
        return 2
    out = args.out or args.runs_dir / "report"
    command = "python -m reports " + " ".join(shlex.quote(a) for a in argv)
    try:
        search = None if args.search is None else [k.strip() for k in args.search.split(",") if k.strip()]
        done = build(args.runs_dir, out, n_boot=args.bootstrap, seed=args.seed, command=command, axis=args.axis,
                     search=search)
    except (NoRuns, AxisError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {done['out'] / 'report.md'} and report.html ({done['runs']} runs: {done['counted']} counted, "
          f"{done['not_ok']} not ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
