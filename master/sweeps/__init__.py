"""Hyperparameter sweeps: trials suggested by Optuna, pruned early, run as ordinary jobs."""
