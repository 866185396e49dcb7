"""What a delivery says: the event's JSON body, and its Slack and email renderings.

The JSON body is made once, when the end is put in the outbox, and stored on the delivery: a retry
sends the same bytes of content, and the delivery log shows what was sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from master.models import Job, Sweep
from shared.status import JobStatus

#: A job's end, by the status it ended in.
JOB_EVENTS = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
    JobStatus.PRUNED: "job.pruned",
}
SWEEP_ENDED = "sweep.ended"
#: What `POST /webhooks/{id}/test` sends.
TEST_EVENT = "test"
EVENTS = (*JOB_EVENTS.values(), SWEEP_ENDED)
#: Longest error line carried (a traceback's first line can be long).
ERROR_MAX = 500


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def first_line(text: str | None) -> str | None:
    if not text:
        return None
    return text.strip().splitlines()[0][:ERROR_MAX] if text.strip() else None


def job_body(job: Job, event: str, api_url: str) -> dict[str, Any]:
    return {
        "event": event,
        "job": {
            "id": job.id,
            "name": job.name,
            "owner": job.owner,
            "project": job.project,
            "tags": list(job.tags),
            "status": job.status.value,
            "error": first_line(job.error),
            "started_at": _time(job.started_at),
            "finished_at": _time(job.finished_at),
            "metrics": dict(job.metrics),
            "url": f"{api_url}/#job-{job.id}",
        },
    }


def sweep_body(sweep: Sweep, counts: dict[str, int], api_url: str) -> dict[str, Any]:
    return {
        "event": SWEEP_ENDED,
        "sweep": {
            "id": sweep.id,
            "name": sweep.name,
            "owner": sweep.owner,
            "project": sweep.project,
            "status": sweep.status,
            "error": first_line(sweep.error),
            "best_job_id": sweep.best_job_id,
            "best_trial": sweep.best_trial,
            "best_value": sweep.best_value,
            "counts": counts,
            "finished_at": _time(sweep.finished_at),
            "url": f"{api_url}/#sweep-{sweep.id}",
        },
    }


def probe_body(webhook_id: int, api_url: str) -> dict[str, Any]:
    return {"event": TEST_EVENT, "webhook": {"id": webhook_id}, "farm": api_url}


def summary(body: dict[str, Any]) -> str:
    """One line for people: Slack's text and an email's subject."""
    if "job" in body:
        job = body["job"]
        label = f"job {job['id']}" + (f" ({job['name']})" if job["name"] else "")
        line = f"{label} {job['status']}"
        return f"{line}: {job['error']}" if job["error"] else line
    if "sweep" in body:
        sweep = body["sweep"]
        line = f"sweep {sweep['id']} ({sweep['name']}) {sweep['status']}"
        if sweep["best_value"] is not None:
            line += f", best trial {sweep['best_trial']} = {sweep['best_value']:g}"
        return line
    return "trainfarm test notification"


def details(body: dict[str, Any]) -> list[str]:
    """The lines under the summary: project, metrics or counts, and the link."""
    thing = body.get("job") or body.get("sweep")
    if thing is None:
        return [f"The webhook works: this farm ({body.get('farm')}) can reach it."]
    lines = [f"project: {thing['project']}", f"owner: {thing['owner']}"]
    if body.get("job"):
        metrics = ", ".join(f"{k}={_number(v)}" for k, v in sorted(thing["metrics"].items()))
        if metrics:
            lines.append(f"metrics: {metrics}")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(thing["counts"].items()))
        lines.append(f"trials: {counts or 'none'}")
    lines.append(thing["url"])
    return lines


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def slack_body(body: dict[str, Any]) -> dict[str, Any]:
    """An incoming-webhook payload (Slack, and the many chat tools that take its shape)."""
    thing = body.get("job") or body.get("sweep")
    head = summary(body)
    if thing is not None:
        head = f"<{thing['url']}|{_escape(head)}>"
    return {"text": "\n".join([head, *(_escape(line) for line in details(body)[: -1 if thing else None])])}


def _escape(text: str) -> str:
    # Slack's mrkdwn treats these three as markup.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def email_text(body: dict[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body of the email for a delivery."""
    subject = f"[trainfarm] {summary(body)}"
    return subject[:200], "\n".join([summary(body), "", *details(body), ""])
