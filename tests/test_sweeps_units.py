"""Fast tests of what decides a sweep: the spec's checks, the Optuna bridge (suggestions, grid
coverage, seeds, pruning, best trial) over trial rows stored in a real SQLite database, and how a
trial follows and settles from its job. No master, worker or Redis."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from master.models import Job, JobMetric, Sweep, SweepTrial
from master.sweeps import study
from master.sweeps.trials import read_new_values, settle, trial_spec
from shared.status import JobStatus
from shared.sweeps import SweepSpec

BASE = {
    "recipe": "tabular-classifier",
    "datasets": ["digits.csv"],
    "hyperparameters": {"target": "digit"},
    "queue": "cpu",
    "tags": ["digits"],
}


def make_spec(**changes: Any) -> SweepSpec:
    raw: dict[str, Any] = {
        "name": "digits",
        "base": BASE,
        "space": {
            "lr": {"type": "log_uniform", "low": 1e-5, "high": 0.1},
            "hidden": {"type": "choice", "values": [32, 64, 128]},
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
        },
        "objective": {"metric": "val_acc", "direction": "maximize"},
        "startup_trials": 2,
        "warmup_epochs": 1,
        **changes,
    }
    return SweepSpec.model_validate(raw)


def stored_sweep(engine: Engine, spec: SweepSpec) -> int:
    with Session(engine) as session:
        sweep = Sweep(name=spec.name, spec=spec.model_dump(mode="json"))
        session.add(sweep)
        session.commit()
        assert sweep.id is not None
        return sweep.id


def read_rows(engine: Engine, sweep_id: int) -> list[SweepTrial]:
    """The rows as the next round reads them: fresh from the database, through the JSON columns."""
    with Session(engine) as session:
        query = select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(col(SweepTrial.number))
        return list(session.exec(query))


def add_row(engine: Engine, sweep_id: int, **fields: Any) -> None:
    with Session(engine) as session:
        session.add(SweepTrial(sweep_id=sweep_id, **fields))
        session.commit()


def curve(final: float, epochs: int = 5) -> dict[str, float]:
    """val_acc by epoch, rising to `final`."""
    return {str(e): final * e / epochs for e in range(1, epochs + 1)}


# The spec ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"lr": {"type": "log_uniform", "low": 0, "high": 1}}, "must be above 0"),
        ({"lr": {"type": "uniform", "low": 1, "high": 0.5}}, "'low' must be below 'high'"),
        ({"hidden": {"type": "choice"}}, "needs 'values'"),
        ({"hidden": {"type": "choice", "values": [1], "low": 0, "high": 2}}, "takes 'values'"),
        ({"layers": {"type": "int", "low": 0.5, "high": 3}}, "whole numbers"),
        ({"bad name!": {"type": "choice", "values": [1]}}, "space.bad name!"),
    ],
)
def test_bad_spaces_are_refused_naming_the_problem(space: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("!", "")):
        make_spec(space=space)


def test_a_grid_takes_only_countable_parameters_and_caps_the_budget() -> None:
    with pytest.raises(ValidationError, match=r"space\.lr: a grid sweep takes"):
        make_spec(sampler="grid")
    grid = make_spec(
        sampler="grid",
        budget=50,
        space={
            "hidden": {"type": "choice", "values": [32, 64]},
            "layers": {"type": "int", "low": 1, "high": 5, "step": 2},
        },
    )
    assert grid.grid_size == 6 and grid.trials_to_run == 6
    assert make_spec(budget=7).trials_to_run == 7


def test_a_huge_grid_is_refused_without_being_made() -> None:
    huge = {"seed": {"type": "int", "low": 0, "high": 2**40}}
    with pytest.raises(ValidationError, match="a grid sweep may have at most 100000"):
        make_spec(sampler="grid", space=huge)
    assert make_spec(space=huge).trials_to_run == 12  # sampled, not walked: any size will do
    with pytest.raises(ValidationError, match="must lie within"):
        make_spec(space={"seed": {"type": "int", "low": 0, "high": 1e300}})


def test_unknown_keys_and_a_bad_base_are_refused() -> None:
    with pytest.raises(ValidationError, match="paralelism"):
        make_spec(paralelism=3)
    with pytest.raises(ValidationError, match=r"base\.queue"):
        make_spec(base={**BASE, "queue": "no such/queue"})


# Suggestions ---------------------------------------------------------------------------------------


def test_a_suggestion_lies_in_the_space_and_is_the_same_when_asked_again(engine: Engine) -> None:
    spec = make_spec(sampler="random", seed=7)
    sweep_id = stored_sweep(engine, spec)
    first = study.suggest(spec, sweep_id, [])
    again = study.suggest(spec, sweep_id, [])
    assert first == again  # a round that failed after asking asks again and gets the same point
    assert first.number == 1
    assert 1e-5 <= first.params["lr"] <= 0.1
    assert first.params["hidden"] in (32, 64, 128)
    assert 0 <= first.params["dropout"] <= 0.5


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_each_trial_number_gets_a_suggestion_of_its_own(engine: Engine, sampler: str) -> None:
    spec = make_spec(sampler=sampler, seed=3)
    sweep_id = stored_sweep(engine, spec)
    lrs = []
    for number in range(1, 7):
        suggestion = study.suggest(spec, sweep_id, read_rows(engine, sweep_id))
        assert suggestion.number == number
        lrs.append(suggestion.params["lr"])
        add_row(engine, sweep_id, number=number, job_id=number, params=suggestion.params, state="running")
    assert len(set(lrs)) == 6
    other = make_spec(sampler=sampler, seed=4)
    assert study.suggest(other, sweep_id, []).params != study.suggest(spec, sweep_id, []).params


def test_without_a_seed_the_sweep_id_seeds_it(engine: Engine) -> None:
    spec = make_spec(sampler="random")
    assert study.suggest(spec, 1, []).params != study.suggest(spec, 2, []).params
    assert study.suggest(spec, 1, []).params == study.suggest(spec, 1, []).params


def test_tpe_suggests_from_results_after_its_random_start(engine: Engine) -> None:
    spec = make_spec(sampler="tpe", seed=1)
    sweep_id = stored_sweep(engine, spec)
    for number in range(1, 13):
        suggestion = study.suggest(spec, sweep_id, read_rows(engine, sweep_id))
        value = 1.0 - abs(suggestion.params["dropout"] - 0.2)
        add_row(
            engine,
            sweep_id,
            number=number,
            job_id=number,
            params=suggestion.params,
            state="complete",
            value=value,
        )
    assert len(read_rows(engine, sweep_id)) == 12


def test_a_grid_covers_every_point_once_across_rounds(engine: Engine) -> None:
    spec = make_spec(
        sampler="grid",
        budget=100,
        space={
            "hidden": {"type": "choice", "values": [32, 64, 128]},
            "layers": {"type": "int", "low": 1, "high": 2},
        },
    )
    sweep_id = stored_sweep(engine, spec)
    seen = []
    for number in range(1, spec.trials_to_run + 1):
        # Each suggestion from a study rebuilt from the stored rows, as each round does; some trials
        # ended, some still run.
        suggestion = study.suggest(spec, sweep_id, read_rows(engine, sweep_id))
        assert "grid_id" in suggestion.system_attrs
        seen.append((suggestion.params["hidden"], suggestion.params["layers"]))
        state = "complete" if number % 2 else "running"
        value = 0.5 if state == "complete" else None
        add_row(
            engine,
            sweep_id,
            number=number,
            job_id=number,
            params=suggestion.params,
            system_attrs=suggestion.system_attrs,
            state=state,
            value=value,
        )
    assert sorted(seen) == sorted((h, n) for h in (32, 64, 128) for n in (1, 2))


# Pruning -------------------------------------------------------------------------------------------


def pruning_rows(engine: Engine, spec: SweepSpec, running: dict[str, float]) -> tuple[int, list[SweepTrial]]:
    """Three complete trials and trial 4 running with `running` so far. The complete ones carry the
    rung the halving pruner gave them at epoch 2, as their stored rows would."""
    sweep_id = stored_sweep(engine, spec)
    params = {"lr": 0.001, "hidden": 64, "dropout": 0.1}
    for number, final in enumerate([0.9, 0.95, 0.85], start=1):
        add_row(
            engine,
            sweep_id,
            number=number,
            job_id=number,
            params=params,
            state="complete",
            value=final,
            intermediate=curve(final),
            system_attrs={"completed_rung_0": curve(final)["2"]},
        )
    add_row(engine, sweep_id, number=4, job_id=4, params=params, intermediate=running)
    return sweep_id, read_rows(engine, sweep_id)


def test_median_pruner_stops_a_trial_worse_than_the_median_at_its_epoch(engine: Engine) -> None:
    spec = make_spec()
    _, rows = pruning_rows(engine, spec, {"1": 0.05, "2": 0.1})
    assert study.judge(spec, rows, 4).prune
    assert study.median_at(rows, 2) == pytest.approx(0.36)


def test_median_pruner_lets_a_good_trial_run(engine: Engine) -> None:
    spec = make_spec()
    _, rows = pruning_rows(engine, spec, {"1": 0.3, "2": 0.5})
    assert not study.judge(spec, rows, 4).prune


def test_no_pruning_in_the_warm_up_epochs_or_before_enough_trials_completed(engine: Engine) -> None:
    _, rows = pruning_rows(engine, make_spec(), {"1": 0.01})
    assert not study.judge(make_spec(), rows, 4).prune  # epoch 1 is the warm-up
    assert not study.judge(make_spec(startup_trials=4), rows, 4).prune


def test_minimize_prunes_the_high_ones(engine: Engine) -> None:
    spec = make_spec(objective={"metric": "val_loss", "direction": "minimize"})
    _, rows = pruning_rows(engine, spec, {"1": 5.0, "2": 5.0})
    assert study.judge(spec, rows, 4).prune  # above the median: worse, when lower is better
    _, low = pruning_rows(engine, spec, {"1": 0.0, "2": 0.0})
    assert not study.judge(spec, low, 4).prune


def test_pruner_none_never_prunes(engine: Engine) -> None:
    spec = make_spec(pruner="none")
    _, rows = pruning_rows(engine, spec, {"1": 0.0, "2": 0.0, "3": 0.0})
    assert not study.judge(spec, rows, 4).prune


def test_successive_halving_prunes_and_leaves_its_rungs_to_store(engine: Engine) -> None:
    spec = make_spec(pruner="halving")
    _, rows = pruning_rows(engine, spec, {"1": 0.01, "2": 0.02})
    verdict = study.judge(spec, rows, 4)
    assert verdict.prune
    assert any(key.startswith("completed_rung_") for key in verdict.system_attrs)


# Best trial ----------------------------------------------------------------------------------------


def test_best_is_the_best_complete_trial_by_direction() -> None:
    rows = [
        SweepTrial(sweep_id=1, number=1, state="complete", value=0.8, job_id=11),
        SweepTrial(sweep_id=1, number=2, state="pruned", value=None, job_id=12),
        SweepTrial(sweep_id=1, number=3, state="complete", value=0.9, job_id=13),
        SweepTrial(sweep_id=1, number=4, state="complete", value=0.9, job_id=14),
        SweepTrial(sweep_id=1, number=5, state="failed", job_id=15),
    ]
    best = study.best(make_spec(), rows)
    assert best is not None and best.number == 3  # the earlier of the two best
    lowest = study.best(make_spec(objective={"metric": "val_loss", "direction": "minimize"}), rows)
    assert lowest is not None and lowest.number == 1
    assert study.best(make_spec(), [rows[1], rows[4]]) is None


# Trials as jobs ------------------------------------------------------------------------------------


def test_a_trial_job_is_the_base_with_its_parameters_named_and_tagged() -> None:
    spec = make_spec()
    sweep = Sweep(id=5, name="digits", spec={})
    job = trial_spec(sweep, spec, 3, {"lr": 0.01, "hidden": 64})
    assert job.name == "digits-3"
    assert job.hyperparameters == {"target": "digit", "lr": 0.01, "hidden": 64}
    assert job.tags == ["digits", "sweep:5"]
    assert job.queue == "cpu" and job.datasets == ["digits.csv"]
    assert spec.base.hyperparameters == {"target": "digit"}  # the base is not changed


def stored_job(session: Session, **fields: Any) -> Job:
    job = Job(queue="cpu", spec={}, **fields)
    session.add(job)
    session.commit()
    return job


def test_new_metric_rows_become_intermediate_values_by_epoch(engine: Engine) -> None:
    with Session(engine) as session:
        job = stored_job(session)
        trial = SweepTrial(sweep_id=1, number=1, job_id=job.id)
        session.add_all(
            [
                JobMetric(
                    job_id=job.id or 0,
                    attempt=1,
                    kind="progress",
                    step=10,
                    epoch=1,
                    values={"train_loss": 1.0},
                ),
                JobMetric(
                    job_id=job.id or 0, attempt=1, kind="metrics", step=23, epoch=1, values={"val_acc": 0.5}
                ),
                JobMetric(
                    job_id=job.id or 0, attempt=1, kind="metrics", step=46, epoch=2, values={"val_acc": 0.7}
                ),
                JobMetric(job_id=job.id or 0, attempt=1, kind="metrics", step=50, values={"val_acc": 0.75}),
            ]
        )
        session.commit()
        assert read_new_values(session, trial, "val_acc")
        assert trial.intermediate == {"1": 0.5, "2": 0.7, "50": 0.75}
        last = trial.last_metric_id
        assert last > 0
        assert not read_new_values(session, trial, "val_acc")  # nothing new: nothing to judge
        session.add(
            JobMetric(job_id=job.id or 0, attempt=1, kind="progress", step=60, values={"train_loss": 0.1})
        )
        session.commit()
        assert not read_new_values(session, trial, "val_acc")
        assert trial.last_metric_id > last  # read past, not read again


@pytest.mark.parametrize(
    ("status", "pruning", "metrics", "state", "value"),
    [
        (JobStatus.SUCCEEDED, False, {"val_acc": 0.9723}, "complete", 0.9723),
        (JobStatus.SUCCEEDED, True, {"val_acc": 0.5}, "complete", 0.5),  # it finished before the stop
        (JobStatus.SUCCEEDED, False, {"val_loss": 0.2}, "failed", None),
        (JobStatus.PRUNED, True, {"val_acc": 0.1}, "pruned", None),
        (JobStatus.FAILED, False, {}, "failed", None),
        (JobStatus.CANCELLED, False, {"val_acc": 0.9}, "failed", None),
    ],
)
def test_a_trial_settles_from_its_ended_job(
    status: JobStatus, pruning: bool, metrics: dict, state: str, value: float | None
) -> None:
    job = Job(id=9, queue="cpu", spec={}, status=status, pruning=pruning, metrics=metrics)
    trial = SweepTrial(sweep_id=1, number=2, job_id=9)
    settle(trial, job, "val_acc")
    assert (trial.state, trial.value) == (state, value)
    assert trial.finished_at is not None
    if state == "failed" and status == JobStatus.SUCCEEDED:
        assert "without reporting 'val_acc'" in job.warnings[-1]
