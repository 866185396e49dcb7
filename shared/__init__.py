"""Code both the master and the workers import: job specs, settings, storage and stream helpers."""
