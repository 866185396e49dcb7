"""Built-in training recipes, each runnable as `python -m worker.recipes.<name>` inside a job."""
