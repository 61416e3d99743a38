"""The training engine: what any recipe's stage runs on, and nothing about which recipe it is.

loop.py (fit: one stage, early stopping, resumable), checkpoint.py (atomic, checksummed files),
distributed.py (torchrun), compute.py (precision, compile, micro-batches, loading), guard.py (signals).
Imports: recipes.errors and tasks.base only (enforced by import-linter, pyproject.toml).
"""
