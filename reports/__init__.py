"""Comparison reports from saved results only: `python -m reports RUNS_DIR [-o OUT_DIR]`.

Reads every result.json (and metrics.jsonl) under a folder and imports nothing from the training
code, so a report is a pure function of a folder of result files (and of the bootstrap seed).

    load.py     runs, unfinished run folders, metrics logs -> tidy DataFrames
    stats.py    cells, bootstrap CIs, gaps, gap closed by SPT, SPT gain (Welch's t), floors
    axis.py     study axes (e.g. task.train_fraction): detection, --axis, cells per axis value, axis.csv
    select.py   hyperparameter selection on validation: search keys, grids, the configuration kept per cell
    locality.py the Locality section: result.json `probes` per stage, Δlocality vs SPT gain, its figures
    figures.py  matplotlib (Agg) PNGs
    render.py   blocks -> Markdown and self-contained, escaped HTML
    build.py    assembles the report: build(runs_dir, out_dir)
    hook.py     Hydra callback: builds the report when a `run.py -m` sweep ends

Nothing is imported here, so that loading the sweep hook (every run.py start) stays cheap.
"""
