"""The sweep driver: one round prunes, records and starts trials of every running sweep.

Everything lives in the `sweeps` and `sweep_trials` rows; the driver keeps nothing between rounds
that matters, so a restarted master goes on where the last one stopped. One driver per farm, like
the admitter: trial numbers are the rows' keys, so even a second one could not duplicate a trial.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from master.fairshare.submission import QueuedCapReached, check_queued_cap
from master.lifecycle import Origin, prune_job, submit_jobs
from master.metrics import JOBS_SUBMITTED
from master.models import Sweep, SweepTrial, utcnow
from master.sweeps import study
from master.sweeps.ending import end_sweep
from master.sweeps.trials import read_new_values, settle, trial_jobs, trial_spec
from shared.sweeps import SweepSpec

if TYPE_CHECKING:
    from master.state import MasterState

log = logging.getLogger(__name__)
#: Longest error text kept on a sweep.
ERROR_MAX = 2000


class SweepDriver:
    def __init__(self, state: MasterState) -> None:
        self._state = state
        #: The last error logged per sweep, so one that repeats every round is logged once.
        self._logged: dict[int, str] = {}

    @property
    def _engine(self) -> Engine:
        return self._state.engine

    def round(self) -> None:
        """One pass over the running sweeps (the background loop calls it every sweep_interval),
        and over ended ones whose trials' jobs are still stopping."""
        with Session(self._engine) as session:
            running = set(session.exec(select(Sweep.id).where(Sweep.status == "running")))
            stopping = set(
                session.exec(
                    select(SweepTrial.sweep_id).where(col(SweepTrial.finished_at).is_(None)).distinct()
                )
            )
        for sweep_id in sorted(i for i in running | stopping if i is not None):
            try:
                self.drive(sweep_id)
            except Exception as exc:  # one bad sweep must not hold up the others
                self._note_error(sweep_id, exc)
            else:
                self._logged.pop(sweep_id, None)

    def drive(self, sweep_id: int) -> None:
        # Rows stay loaded across the round's commits: re-reading each after every commit buys nothing.
        with Session(self._engine, expire_on_commit=False) as session:
            sweep = session.exec(select(Sweep).where(Sweep.id == sweep_id).with_for_update()).one()
            try:
                spec = SweepSpec.model_validate(sweep.spec)
            except ValidationError as exc:
                # Stored by an older master, say: no round will make it valid.
                self._end(session, sweep, "failed", f"the stored sweep spec is invalid: {exc}")
                return
            rows = list(
                session.exec(
                    select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(col(SweepTrial.number))
                )
            )
            stopped = self._follow(session, sweep, spec, rows)
            session.commit()
            for job_id in stopped:
                self._state.admitter.forget(job_id)
            if sweep.status != "running":
                return
            self._start_trials(session, sweep, spec, rows)
            if len(rows) >= spec.trials_to_run and all(r.finished_at is not None for r in rows):
                self._finish(session, sweep, spec, rows)

    def _follow(self, session: Session, sweep: Sweep, spec: SweepSpec, rows: list[SweepTrial]) -> list[int]:
        """Read what running trials reported, prune the ones the pruner stops, settle the ones whose
        job ended; the ids of the jobs pruned."""
        metric = spec.objective.metric
        following = [r for r in rows if r.finished_at is None]
        jobs = trial_jobs(session, following)
        pruned: list[int] = []
        for row in following:
            job = jobs.get(row.job_id or 0)
            if job is None:  # deleted under the sweep: nothing more will come
                row.state, row.finished_at = "failed", utcnow()
                session.add(row)
                continue
            arrived = read_new_values(session, row, metric)
            session.add(row)
            if job.status.terminal:
                settle(row, job, metric)
                session.add(job)
                continue
            if arrived and sweep.status == "running" and row.state == "running" and not job.pruning:
                verdict = study.judge(spec, rows, row.number)
                row.system_attrs = verdict.system_attrs
                if verdict.prune:
                    # Locked and read again: an end the events applied meanwhile is kept, not pruned over.
                    session.refresh(job, with_for_update=True)
                    prune_job(session, self._state.broker, job, prune_reason(spec, rows, row))
                    row.state = "pruned"
                    pruned.append(job.id or 0)
                    if job.status.terminal:
                        settle(row, job, metric)
        return pruned

    def _start_trials(self, session: Session, sweep: Sweep, spec: SweepSpec, rows: list[SweepTrial]) -> None:
        """Start trials while the budget and the parallelism allow and the owner's queued cap has
        room; each trial's row is stored with its job, in one transaction."""
        settings = self._state.settings
        while len(rows) < spec.trials_to_run:
            if sum(1 for r in rows if r.finished_at is None) >= spec.parallelism:
                return
            # Locked again: a cancel that came in since the last commit wins.
            session.refresh(sweep, with_for_update=True)
            if sweep.status != "running":
                return
            try:
                check_queued_cap(session, settings, sweep.owner, [spec.base])
            except QueuedCapReached as exc:
                wait = f"waiting: {exc.message}"
                if sweep.error != wait:
                    sweep.error = wait
                    session.add(sweep)
                session.commit()
                return
            suggestion = study.suggest(spec, sweep.id or 0, rows)
            job_spec = trial_spec(sweep, spec, suggestion.number, suggestion.params)
            origin = Origin(sweep_id=sweep.id, trial=suggestion.number)
            [(job, attempt)] = submit_jobs(session, [job_spec], sweep.owner, None, [origin], commit=False)
            row = SweepTrial(
                sweep_id=sweep.id or 0,
                number=suggestion.number,
                job_id=job.id,
                params=suggestion.params,
                system_attrs=suggestion.system_attrs,
            )
            session.add(row)
            sweep.error = None
            session.add(sweep)
            session.commit()
            JOBS_SUBMITTED.labels(job_spec.queue).inc()
            if attempt.id is not None:
                self._state.admitter.submitted([attempt.id])
            rows.append(row)

    def _finish(self, session: Session, sweep: Sweep, spec: SweepSpec, rows: list[SweepTrial]) -> None:
        winner = study.best(spec, rows)
        if winner is None:
            counts = Counter(r.state for r in rows)
            summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            self._end(session, sweep, "failed", f"no trial reported {spec.objective.metric} ({summary})")
            return
        sweep.best_job_id, sweep.best_trial, sweep.best_value = winner.job_id, winner.number, winner.value
        self._end(session, sweep, "succeeded", None)

    def _end(self, session: Session, sweep: Sweep, status: str, error: str | None) -> None:
        end_sweep(sweep, status, error)
        session.add(sweep)
        session.commit()
        log.info("sweep %s %s%s", sweep.id, status, f": {error}" if error else "")

    def _note_error(self, sweep_id: int, exc: Exception) -> None:
        text = f"sweep driver: {type(exc).__name__}: {exc}"[:ERROR_MAX]
        if self._logged.get(sweep_id) != text:
            log.exception("sweep %s: a round failed; trying again next round", sweep_id)
            self._logged[sweep_id] = text
        try:
            with Session(self._engine) as session:
                sweep = session.get(Sweep, sweep_id)
                if sweep is not None and sweep.error != text:
                    sweep.error = text
                    session.add(sweep)
                    session.commit()
        except Exception:
            log.exception("sweep %s: could not store the round's error", sweep_id)


def prune_reason(spec: SweepSpec, rows: list[SweepTrial], row: SweepTrial) -> str:
    """`pruned at epoch 3: val_acc 0.21 worse than the median 0.83 of earlier trials at epoch 3`."""
    step = max(int(s) for s in row.intermediate)
    value = row.intermediate[str(step)]
    metric = spec.objective.metric
    if spec.pruner == "median":
        median = study.median_at(rows, step)
        than = f"the median {median:.4g}" if median is not None else "the median"
        return f"pruned at epoch {step}: {metric} {value:.4g} worse than {than} of earlier trials at epoch {step}"
    return (
        f"pruned at epoch {step}: {metric} {value:.4g} not in the top share of its rung (successive halving)"
    )
