"""Measurements and side outputs around a run: probes.py (locality probes), baselines.py (reference
floors), track.py (TensorBoard / W&B), export.py (shareable pretrained bodies). They read models and
splits and write files; no recipe's result depends on them (probes run under a forked RNG)."""
