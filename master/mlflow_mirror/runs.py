"""What a job's MLflow run holds: its tags, params, metric points and closing status, made from the
job's rows and cut to MLflow's limits. No I/O here, so the rules are tested on their own."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from master.models import Artifact, Job, JobMetric
from shared.status import JobStatus

#: MLflow's limits: key length (params, metrics, tags), param and tag value length.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
#: Artifacts named in tags one by one; the `trainfarm.artifacts` tag links the whole list.
MAX_ARTIFACT_TAGS = 100
#: The spec fields sent as params beside the hyperparameters (which win a clash of names).
SPEC_PARAMS = ("max_epochs", "seed", "devices", "queue", "recipe", "command")
#: The characters MLflow allows in a key; any other becomes `_`.
_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")

FINAL_STATUS = {
    JobStatus.SUCCEEDED: "FINISHED",
    JobStatus.FAILED: "FAILED",
    JobStatus.CANCELLED: "KILLED",
    JobStatus.PRUNED: "KILLED",
}


def mlflow_key(name: str) -> str:
    """`name` as a key MLflow accepts: other characters replaced by `_`, cut to MAX_KEY."""
    return _NOT_IN_KEY.sub("_", name)[:MAX_KEY] or "_"


def cut(value: str, limit: int) -> str:
    """`value` cut to `limit` characters, the cut marked with `...`."""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def as_text(value: Any) -> str:
    """A param's value as MLflow's own client writes it (`str()`); lists and dicts as JSON."""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: {"opt": {"lr": 0.1}} -> {"opt.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


def run_params(spec: Mapping[str, Any]) -> dict[str, str]:
    """The hyperparameters (flattened), then the spec fields in SPEC_PARAMS whose names no
    hyperparameter took; keys and values cut to MLflow's limits, the first of two keys that
    end up the same kept."""
    values = flatten(spec.get("hyperparameters") or {})
    for name in SPEC_PARAMS:
        value = spec.get(name)
        if value is not None and name not in values:
            values[name] = shlex.join(value) if name == "command" else value
    params: dict[str, str] = {}
    for name, value in values.items():
        params.setdefault(mlflow_key(name), cut(as_text(value), MAX_PARAM_VALUE))
    return params


def millis(moment: datetime) -> int:
    """Milliseconds since the epoch; a naive time (SQLite gives them back so) is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def job_url(api_url: str, job_id: int) -> str:
    """The job in the dashboard (master/static/app.js opens `#job-<id>`)."""
    return f"{api_url}/#job-{job_id}"


def artifact_url(api_url: str, job_id: int, name: str) -> str:
    return f"{api_url}/api/jobs/{job_id}/artifacts/{quote(name, safe='/')}"


def run_name(job: Job) -> str:
    return job.name or f"job-{job.id}"


def run_tags(job: Job, api_url: str) -> dict[str, str]:
    """The tags a run is created with: who, what and where the job is."""
    assert job.id is not None
    tags = {
        "trainfarm.job_id": str(job.id),
        "trainfarm.project": job.project,
        "trainfarm.tags": ",".join(job.tags),
        "trainfarm.url": job_url(api_url, job.id),
    }
    if job.owner:
        tags["trainfarm.owner"] = job.owner
        tags["mlflow.user"] = job.owner
    return {key: cut(value, MAX_TAG_VALUE) for key, value in tags.items()}


def metric_points(rows: Iterable[JobMetric]) -> list[dict[str, Any]]:
    """One MLflow metric point per value: step = the row's step, else its epoch, else 0."""
    points = []
    for row in rows:
        step = row.step if row.step is not None else (row.epoch if row.epoch is not None else 0)
        timestamp = millis(row.ts)
        for name, value in row.values.items():
            points.append(
                {"key": mlflow_key(name), "value": float(value), "timestamp": timestamp, "step": step}
            )
    return points


def closing_tags(job: Job, artifacts: list[Artifact], api_url: str) -> dict[str, str]:
    """Tags set as the run ends: each artifact's download link and size (the first
    MAX_ARTIFACT_TAGS by name), the link to the whole list, and the job's error if it has one."""
    assert job.id is not None
    tags = {
        "trainfarm.status": job.status.value,
        "trainfarm.artifacts": f"{api_url}/api/jobs/{job.id}/artifacts ({len(artifacts)} files)",
    }
    for artifact in sorted(artifacts, key=lambda a: a.name)[:MAX_ARTIFACT_TAGS]:
        key = mlflow_key(f"trainfarm.artifact.{artifact.name}")
        tags.setdefault(key, f"{artifact_url(api_url, job.id, artifact.name)} ({artifact.size} bytes)")
    if job.error:
        tags["trainfarm.error"] = job.error
    return {key: cut(value, MAX_TAG_VALUE) for key, value in tags.items()}
