"""Working with many runs at once: re-running a job with changes, comparing jobs (sweeps are in
master/sweeps/)."""
