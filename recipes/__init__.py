"""Training recipes: model assembly, objectives, the shared training loop, and one file per recipe
(`supervised.py`, `spt.py`). `recipes.experiment.run(cfg)` is what `run.py` calls."""
