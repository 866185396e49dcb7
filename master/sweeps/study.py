"""The bridge to Optuna: a sweep's study, rebuilt in memory from its `sweep_trials` rows whenever the
driver needs a suggestion or a pruning decision, so no Optuna table lives in the farm's database and
a master restart loses nothing."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from master.models import SweepTrial
from shared.sweeps import Param, SweepSpec

#: Our trial states and Optuna's.
STATES = {
    "running": TrialState.RUNNING,
    "complete": TrialState.COMPLETE,
    "pruned": TrialState.PRUNED,
    "failed": TrialState.FAIL,
}
#: Spreads the per-suggestion seeds of one sweep far apart from another's.
SEED_STRIDE = 1_000_003

# Optuna logs every trial it is told of at INFO: one line per trial per round would bury the
# master's log. Its experimental-API warnings say nothing a farm user can act on.
optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)


def distribution(param: Param) -> BaseDistribution:
    if param.type == "choice":
        return CategoricalDistribution(param.values or [])
    assert param.low is not None and param.high is not None  # the spec checked them
    if param.type == "int":
        return IntDistribution(int(param.low), int(param.high), step=param.step or 1)
    return FloatDistribution(param.low, param.high, log=param.type == "log_uniform")


def distributions(spec: SweepSpec) -> dict[str, BaseDistribution]:
    return {name: distribution(param) for name, param in spec.space.items()}


def suggestion_seed(spec: SweepSpec, sweep_id: int, number: int) -> int:
    """A sampler rebuilt each round with one seed would suggest the same point every time: each
    trial number gets its own, derived from the sweep's. Except the grid's: its seed shuffles the
    grid, which must stay in one order for its grid ids to name the same points every round."""
    base = spec.seed if spec.seed is not None else sweep_id
    if spec.sampler == "grid":
        return base % 2**32
    return (base * SEED_STRIDE + number) % 2**32


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    if spec.sampler == "grid":
        grid = {name: param.grid or [] for name, param in spec.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    # Epochs count from 1, so epochs 1..warmup_epochs are the warm-up: judging starts after them.
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs + 1
        )
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.warmup_epochs + 1)
    return optuna.pruners.NopPruner()


def frozen(spec: SweepSpec, dists: dict[str, BaseDistribution], row: SweepTrial) -> FrozenTrial:
    state = STATES.get(row.state, TrialState.FAIL)
    value = row.value if state == TrialState.COMPLETE else None
    params = {name: row.params[name] for name in dists if name in row.params}
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions={name: dists[name] for name in params},
        intermediate_values={int(step): v for step, v in row.intermediate.items() if math.isfinite(v)},
        system_attrs=dict(row.system_attrs),
    )


def build_study(spec: SweepSpec, rows: Sequence[SweepTrial], seed: int = 0) -> optuna.Study:
    """The sweep's study as its rows say, oldest trial first (Optuna numbers them 0, 1, ... in that
    order, so our trial n is Optuna's n - 1)."""
    study = optuna.create_study(
        direction=spec.objective.direction, sampler=make_sampler(spec, seed), pruner=make_pruner(spec)
    )
    dists = distributions(spec)
    for row in sorted(rows, key=lambda r: r.number):
        study.add_trial(frozen(spec, dists, row))
    return study


@dataclass(frozen=True)
class Suggestion:
    number: int
    params: dict[str, Any]
    #: What the sampler wrote on the trial (the grid sampler's grid id), to store with it.
    system_attrs: dict[str, Any]


def suggest(spec: SweepSpec, sweep_id: int, rows: Sequence[SweepTrial]) -> Suggestion:
    """The next trial's hyperparameters; rows must be the sweep's trials 1..n, all of them."""
    number = len(rows) + 1
    study = build_study(spec, rows, suggestion_seed(spec, sweep_id, number))
    trial = study.ask(distributions(spec))
    stored = study._storage.get_trial(trial._trial_id)
    return Suggestion(number, dict(trial.params), dict(stored.system_attrs))


@dataclass(frozen=True)
class Verdict:
    prune: bool
    #: The trial's system attributes after the pruner looked (successive halving writes its rungs).
    system_attrs: dict[str, Any]


def judge(spec: SweepSpec, rows: Sequence[SweepTrial], number: int) -> Verdict:
    """Whether the pruner stops running trial `number`, given what every trial reported so far."""
    study = build_study(spec, rows)
    index = sorted(r.number for r in rows).index(number)
    trial = study.get_trials(deepcopy=False)[index]
    prune = bool(study.pruner.prune(study, trial))
    stored = study._storage.get_trial(trial._trial_id)
    return Verdict(prune, dict(stored.system_attrs))


def median_at(rows: Sequence[SweepTrial], step: int) -> float | None:
    """The median of complete trials' values at `step`, for the pruned trial's note."""
    values = sorted(
        v for r in rows if r.state == "complete" and (v := r.intermediate.get(str(step))) is not None
    )
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def best(spec: SweepSpec, rows: Sequence[SweepTrial]) -> SweepTrial | None:
    """The complete trial with the best value (the earliest among equals)."""
    complete = [r for r in rows if r.state == "complete" and r.value is not None]
    if not complete:
        return None
    sign = -1.0 if spec.objective.direction == "maximize" else 1.0
    return min(complete, key=lambda r: (sign * (r.value or 0.0), r.number))
