"""The outbox: ended jobs and sweeps become delivery rows for the webhooks that want them.

A job's (or sweep's) `notified` flag is set in the same transaction that adds its deliveries, and
only by a conditional update that finds it still unset: a crash before the commit announces the end
at the next round, one after it never again, and two masters never both announce it. Nothing here
waits on a receiver; sending is `sender.py`'s, from the rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from master.models import Job, Sweep, SweepTrial, Webhook, WebhookDelivery
from master.notify.active import may_fire
from master.notify.payloads import JOB_EVENTS, SWEEP_ENDED, job_body, sweep_body
from shared.status import TERMINAL

#: Ends taken per round: a backlog (the notifier was down) drains over a few rounds.
BATCH = 100


def wanted_by(hooks: list[Webhook], owner: str | None, project: str, event: str) -> list[Webhook]:
    """The webhooks that announce this event of this owner's thing in this project."""
    return [
        h
        for h in hooks
        if not h.disabled and h.owner == owner and h.project in (None, project) and event in h.events
    ]


def _deliveries(
    hooks: list[Webhook], event: str, subject: str, body: dict[str, Any]
) -> list[WebhookDelivery]:
    return [
        WebhookDelivery(webhook_id=h.id, event=event, subject=subject, payload=body)  # type: ignore[arg-type]
        for h in hooks
    ]


def _claim(session: Session, table: type[Job] | type[Sweep], row_id: int) -> bool:
    """Set the row's `notified` flag if still unset; whether this session did."""
    claimed = session.execute(
        update(table).where(col(table.id) == row_id, col(table.notified).is_(False)).values(notified=True)
    )
    return bool(claimed.rowcount)  # type: ignore[attr-defined]


def collect(session: Session, api_url: str) -> int:
    """Put the ends not yet announced in the outbox; the number of deliveries queued. Commits."""
    queued = 0
    jobs = session.exec(
        select(Job)
        .where(col(Job.notified).is_(False), col(Job.status).in_([s.value for s in TERMINAL]))
        .order_by(col(Job.id))
        .limit(BATCH)
    ).all()
    sweeps = session.exec(
        select(Sweep)
        .where(col(Sweep.notified).is_(False), col(Sweep.status) != "running")
        .order_by(col(Sweep.id))
        .limit(BATCH)
    ).all()
    if not jobs and not sweeps:
        return 0  # most rounds: nothing ended, so the webhooks need not be read
    hooks = list(session.exec(select(Webhook).where(may_fire())))
    for job in jobs:
        assert job.id is not None
        event = JOB_EVENTS[job.status]
        wanted = wanted_by(hooks, job.owner, job.project, event)
        body = job_body(job, event, api_url) if wanted else {}
        if _claim(session, Job, job.id):
            made = _deliveries(wanted, event, f"job {job.id}", body)
            session.add_all(made)
            queued += len(made)
    for sweep in sweeps:
        assert sweep.id is not None
        wanted = wanted_by(hooks, sweep.owner, sweep.project, SWEEP_ENDED)
        body = sweep_body(sweep, trial_counts(session, sweep.id), api_url) if wanted else {}
        if _claim(session, Sweep, sweep.id):
            made = _deliveries(wanted, SWEEP_ENDED, f"sweep {sweep.id}", body)
            session.add_all(made)
            queued += len(made)
    session.commit()
    return queued


def trial_counts(session: Session, sweep_id: int) -> dict[str, int]:
    states = session.exec(select(SweepTrial.state).where(SweepTrial.sweep_id == sweep_id)).all()
    return dict(Counter(states))
