"""A hyperparameter sweep as a user writes it (`examples/sweep.yaml`, POST /api/sweeps): a base job,
a search space, an objective, and how many trials to run and at once."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.schemas import NAME_PATTERN, JobSpec

#: Hyperparameter names as the spec's `hyperparameters` keys are written.
PARAM_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
#: Largest `int` bound: whole numbers a float (and so a JSON reader anywhere) holds exactly.
MAX_INT = 2**53
#: Most points a grid sweep may have: its grid is made in memory whenever a trial is suggested.
MAX_GRID = 100_000
Choice = str | int | float | bool


class Param(BaseModel):
    """One hyperparameter's range: `choice` from `values`, or `uniform`, `log_uniform` and `int`
    between `low` and `high`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: Literal["choice", "uniform", "log_uniform", "int"]
    values: list[Choice] | None = Field(default=None, min_length=1, max_length=1000)
    low: float | None = None
    high: float | None = None
    #: For `int`: the grid of values from `low` in steps of `step`.
    step: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> Param:
        if self.type == "choice":
            if self.values is None:
                raise ValueError("a 'choice' parameter needs 'values'")
            if self.low is not None or self.high is not None:
                raise ValueError("a 'choice' parameter takes 'values', not 'low' and 'high'")
            return self
        if self.values is not None:
            raise ValueError(f"a '{self.type}' parameter takes 'low' and 'high', not 'values'")
        if self.low is None or self.high is None:
            raise ValueError(f"a '{self.type}' parameter needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError("'low' must be below 'high'")
        if self.type == "log_uniform" and self.low <= 0:
            raise ValueError("a 'log_uniform' range must be above 0")
        if self.type == "int" and (not float(self.low).is_integer() or not float(self.high).is_integer()):
            raise ValueError("an 'int' range needs whole numbers")
        if self.type == "int" and max(abs(self.low), abs(self.high)) > MAX_INT:
            raise ValueError(f"an 'int' range must lie within ±{MAX_INT}")
        return self

    @property
    def grid_count(self) -> int | None:
        """How many values `grid` holds, without making the list."""
        if self.type == "choice":
            return len(self.values or [])
        if self.type == "int" and self.low is not None and self.high is not None:
            return len(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None

    @property
    def grid(self) -> list[Choice] | None:
        """The values a grid search walks through; None for a continuous range."""
        if self.type == "choice":
            return self.values
        if self.type == "int" and self.low is not None and self.high is not None:
            return list(range(int(self.low), int(self.high) + 1, self.step or 1))
        return None


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: A metric the job reports (`val_acc`, `val_loss`): its last value is the trial's result, and
    #: each epoch's value is what pruning compares.
    metric: Annotated[str, Field(pattern=r"^[A-Za-z0-9_./:-]{1,128}$")]
    direction: Literal["maximize", "minimize"]


class SweepSpec(BaseModel):
    """What to search: every trial is `base` with the sampled hyperparameters set."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(pattern=NAME_PATTERN, description="The sweep's name; trials are named <name>-<n>")
    base: JobSpec = Field(description="The job every trial runs, before its hyperparameters are set")
    space: dict[Annotated[str, Field(pattern=PARAM_NAME)], Param] = Field(min_length=1, max_length=32)
    objective: Objective
    #: Optuna's samplers: TPE (the default), random, or grid (every combination of `choice` and
    #: stepped `int` values, up to the budget).
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    #: `median` stops a trial worse than the median of earlier trials at the same epoch;
    #: `halving` is successive halving (asynchronous, as ASHA); `none` lets every trial finish.
    pruner: Literal["median", "halving", "none"] = "median"
    #: Trials that run to the end before any is pruned, and epochs before a trial may be pruned.
    startup_trials: int = Field(default=3, ge=0, le=1000)
    warmup_epochs: int = Field(default=1, ge=0, le=100_000)
    budget: int = Field(default=12, ge=1, le=1000, description="Trials to run in all")
    parallelism: int = Field(default=2, ge=1, le=100, description="Trials waiting or running at once")
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="The sampler's seed")

    @model_validator(mode="after")
    def _searchable(self) -> SweepSpec:
        if self.sampler == "grid":
            for name, param in self.space.items():
                if param.grid_count is None:
                    raise ValueError(f"space.{name}: a grid sweep takes 'choice' or 'int' parameters")
            if (self.grid_size or 0) > MAX_GRID:
                raise ValueError(
                    f"the grid has {self.grid_size} points; a grid sweep may have at most {MAX_GRID}"
                )
        return self

    @property
    def grid_size(self) -> int | None:
        if self.sampler != "grid":
            return None
        return math.prod(p.grid_count or 0 for p in self.space.values())

    @property
    def trials_to_run(self) -> int:
        """The budget, or the grid's size when a grid has fewer points."""
        size = self.grid_size
        return self.budget if size is None else min(self.budget, size)
