"""Mirroring every job to an MLflow tracking server, in the background."""
