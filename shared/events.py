"""The events a worker reports about an attempt, one model per kind, validated on both sides.

A worker builds these models (a renamed field is then a type error, not a silent `None` on the
master); the master parses them again from the stream, because anything that can write to Redis
can write there. What a job's own process writes to its events file is a `Metrics` line: the job is
untrusted, so the bounds below are checked before a line becomes an event.

Decisions, so both sides agree:
- Metric values are finite numbers (JSON ints or floats, not strings or booleans); NaN and
  infinity are refused, because the database's JSON cannot store them (`worker.runtime.report`
  already leaves them out). An integer too big for a float (10**400) is refused, never an
  OverflowError.
- Strings a job writes (metric names, the metric kind) are refused past their bound; strings the
  worker itself writes (an error, the log tail) are cut to their bound instead, because an
  attempt's end must always be reportable.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from shared.schemas import AttemptOutcome, EventKind

#: The largest value of the database's BIGINT columns (job ids, steps, sizes).
MAX_BIGINT = 2**63 - 1
#: Metric names per event and characters per name: a model logs dozens, never thousands.
MAX_METRICS = 256
MAX_METRIC_NAME = 128
#: What the worker writes is cut, not refused, past these.
MAX_ERROR_CHARS = 4_000
MAX_LOG_TAIL_CHARS = 64 * 1024
MAX_TEXT_CHARS = 1_024


def _clip(limit: int, keep_end: bool = False) -> AfterValidator:
    """Cut a string to `limit` characters (the end of it for tails); NUL, which PostgreSQL text
    refuses, becomes U+FFFD."""

    def cut(value: str) -> str:
        value = value.replace("\x00", "\ufffd")
        if len(value) <= limit:
            return value
        return "…" + value[-(limit - 1) :] if keep_end else value[: limit - 1] + "…"

    return AfterValidator(cut)


Bigint = Annotated[int, Field(ge=0, le=MAX_BIGINT, strict=True)]
Number = Annotated[float, Field(allow_inf_nan=False, strict=True)]
#: PostgreSQL's text and JSON refuse NUL.
NO_NUL = r"^[^\x00]+$"
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METRIC_NAME, pattern=NO_NUL)]
Text = Annotated[str, _clip(MAX_TEXT_CHARS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# What each kind carries


class Metrics(_Strict):
    """One line of a job's events file, as `worker.runtime.report` writes it: metric values, or
    progress, at a step and epoch."""

    kind: Literal["metrics", "progress"] = "metrics"
    step: Bigint | None = None
    epoch: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] | None = None
    max_epochs: Annotated[int, Field(ge=1, le=2**31 - 1, strict=True)] | None = None
    metrics: Annotated[dict[MetricName, Number], Field(max_length=MAX_METRICS)] = Field(default_factory=dict)
    #: When the job wrote the line; the master keeps the worker's time of the event.
    ts: Number | None = None


class DatasetFetched(_Strict):
    name: Text
    cached: bool
    size: Bigint


class Started(_Strict):
    """The attempt runs on this node: first with its pid, again once datasets and code are in place."""

    pid: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    datasets: Annotated[list[DatasetFetched], Field(max_length=64)] | None = None
    restored_checkpoint: Text | None = None


#: Longest artifact name: as long as the database's column; S3 keys stop at 1,024 bytes anyway.
ARTIFACT_NAME_MAX = 512


class ArtifactStored(_Strict):
    """A file of the attempt is in S3 under `key` (outputs, and checkpoints while it runs)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=ARTIFACT_NAME_MAX, pattern=NO_NUL)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=NO_NUL)]
    size: Bigint
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None


class Finished(_Strict):
    """The attempt ended; `handed_back` means its worker shut down and gave it back."""

    outcome: AttemptOutcome
    error: Annotated[str, _clip(MAX_ERROR_CHARS)] | None = None
    retryable: bool = False
    handed_back: bool = False
    exit_code: Annotated[int, Field(ge=-(2**31), le=2**32)] | None = None
    log_key: Text | None = None
    log_tail: Annotated[str, _clip(MAX_LOG_TAIL_CHARS, keep_end=True)] | None = None


#: GPUs one attempt may be given on one node; a DGX has 8, the largest machines 16.
MAX_USAGE_GPUS = 64
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, strict=True)]


class GpuUsage(_Strict):
    """One GPU of the attempt at one moment: utilisation in percent, memory in bytes; None where
    the device does not report it (a MIG slice has no utilisation)."""

    index: Annotated[int, Field(ge=0, le=1023, strict=True)]
    util: Percent | None = None
    mem_used: Bigint | None = None
    mem_total: Bigint | None = None


class CpuUsage(_Strict):
    """The attempt's process tree at one moment: CPU in percent of one core (so up to 100 times
    the cores), resident memory in bytes summed over its processes."""

    percent: Annotated[float, Field(ge=0, le=100 * 4096, allow_inf_nan=False, strict=True)]
    rss: Bigint


class Usage(_Strict):
    """A sample of what the attempt uses, which its worker takes every `usage_sample_interval`
    seconds: its GPUs on a GPU node, else its processes' CPU and memory. The worker writes these,
    not the job, so their rate is the worker's."""

    gpus: Annotated[list[GpuUsage], Field(min_length=1, max_length=MAX_USAGE_GPUS)] | None = None
    cpu: CpuUsage | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Usage:
        if self.gpus is None and self.cpu is None:
            raise ValueError("a usage sample has gpus or cpu")
        return self


EventData = Started | Metrics | ArtifactStored | Finished | Usage


# ---------------------------------------------------------------------------------------------
# The envelope: which attempt, in which order


class _Envelope(_Strict):
    """`seq` rises by one per event of an attempt, so the master applies each exactly once however
    often Redis delivers it."""

    job_id: Annotated[int, Field(ge=1, le=MAX_BIGINT)]
    attempt: Annotated[int, Field(ge=1, le=2**31 - 1)]
    seq: Annotated[int, Field(ge=1, le=MAX_BIGINT)]
    node: Annotated[str, _clip(255)]
    #: The reporting worker's identity key (`node#instance`): the master binds an attempt to the
    #: worker of its first event and ignores events about it from any other.
    worker: Annotated[str, _clip(255)] = ""
    ts: Annotated[float, Field(allow_inf_nan=False, ge=0)] = Field(default_factory=time.time)


class StartedEvent(_Envelope):
    kind: Literal[EventKind.STARTED] = EventKind.STARTED
    data: Started


class MetricsEvent(_Envelope):
    kind: Literal[EventKind.METRICS] = EventKind.METRICS
    data: Metrics


class ArtifactEvent(_Envelope):
    kind: Literal[EventKind.ARTIFACT] = EventKind.ARTIFACT
    data: ArtifactStored


class FinishedEvent(_Envelope):
    kind: Literal[EventKind.FINISHED] = EventKind.FINISHED
    data: Finished


class UsageEvent(_Envelope):
    kind: Literal[EventKind.USAGE] = EventKind.USAGE
    data: Usage


AnyEvent = StartedEvent | MetricsEvent | ArtifactEvent | FinishedEvent | UsageEvent
Event = Annotated[AnyEvent, Field(discriminator="kind")]

_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def parse_event(raw: str | bytes) -> AnyEvent:
    """An event from its JSON; raises pydantic's ValidationError, naming the field, when it is not one."""
    return _EVENT.validate_json(raw)


#: The envelope of each kind of event data.
_ENVELOPES: dict[type, type[AnyEvent]] = {
    Started: StartedEvent,
    Metrics: MetricsEvent,
    ArtifactStored: ArtifactEvent,
    Finished: FinishedEvent,
    Usage: UsageEvent,
}


def envelope(
    data: EventData, *, job_id: int, attempt: int, seq: int, node: str, worker: str = ""
) -> AnyEvent:
    """Wrap what an attempt reports in the envelope of its kind."""
    kind = _ENVELOPES.get(type(data))
    if kind is None:
        raise TypeError(f"not an event: {type(data).__name__}")
    return kind.model_validate(
        {"job_id": job_id, "attempt": attempt, "seq": seq, "node": node, "worker": worker, "data": data}
    )


def describe(exc: ValidationError) -> str:
    """The first problem pydantic found, as `field: message`, short enough for a warning line."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"[:MAX_TEXT_CHARS]
