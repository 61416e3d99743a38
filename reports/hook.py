"""Build the report when a sweep (`python run.py -m ...`) ends: a Hydra callback, configured in
conf/config.yaml under `hydra.callbacks.report`.

    python run.py -m arch=transformer recipe=supervised,spt seed=0,1,2   # -> <sweep dir>/report/
    python run.py -m ... hydra.callbacks.report.enabled=false            # no report
    python run.py -m ... hydra.callbacks.report.out=reports/mine         # elsewhere

The report covers every run under the sweep folder (`hydra.sweep.dir`, i.e. `out_root`), earlier
ones included: configurations are told apart by their hashes, so nothing is pooled by accident. Search
keys come from the runs' stored config (`search`), so a grid of them is reduced to its configuration
chosen on validation as `python -m reports` does (reports/select.py).
A report that cannot be built never loses results (they are written before) nor hides failed jobs:
the problem is printed, kept in FAILED, and run.py exits non-zero after listing failed jobs.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
FAILED: list[str] = []  # why the sweep's report could not be built; run.py reads it


class SweepReport(Callback):
    def __init__(self, enabled: bool = True, out: str | None = None, bootstrap: int = 10_000, seed: int = 0) -> None:
        self.enabled, self.out, self.bootstrap, self.seed = enabled, out, bootstrap, seed

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        out = Path(self.out) if self.out else sweep_dir / "report"
        try:
            from reports.build import NoRuns, build  # here, not at import: single runs never pay for it

            try:
                done = build(sweep_dir, out, n_boot=self.bootstrap, seed=self.seed,
                             command=f"python -m reports {sweep_dir} -o {out}")
            except NoRuns:
                print(f"report: skipped, no run folders under {sweep_dir}", file=sys.stderr)
                return
        except Exception as exc:  # a report bug must not turn a finished sweep into a lost one
            log.error("report failed:\n%s", traceback.format_exc())
            FAILED.append(f"{type(exc).__name__}: {exc}")
            print(f"error: the sweep finished but its report could not be built ({type(exc).__name__}: {exc}); "
                  f"results are in {sweep_dir}; retry with: python -m reports {sweep_dir} -o {out}", file=sys.stderr)
            return
        print(f"report: {out / 'report.md'} and report.html ({done['runs']} runs: {done['counted']} counted, "
              f"{done['not_ok']} not ok)", file=sys.stderr)
