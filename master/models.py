"""Tables and their public shapes: jobs, job attempts, metrics, artifacts, datasets, code bundles,
nodes, users, API tokens, the audit trail, sweeps, webhooks, the MLflow mirror, metric series
summaries and attempts' resource use."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from shared.roles import Role
from shared.schemas import DEFAULT_PROJECT
from shared.status import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time as an aware UTC one: SQLite and PostgreSQL's plain timestamp hand back naive ones."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def unix_seconds(value: datetime | None) -> float | None:
    """A stored time as Unix seconds (None stays None), read as UTC like `as_utc`."""
    return None if value is None else as_utc(value).timestamp()


class RoleColumn(TypeDecorator[Role]):
    """A plain string column read back as a `Role`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: Role | str | None, dialect: object) -> str | None:
        return None if value is None else Role(value).value

    def process_result_value(self, value: str | None, dialect: object) -> Role | None:
        return None if value is None else Role(value)


class StatusColumn(TypeDecorator[JobStatus]):
    """A plain string column (no database enum type to migrate) read back as a `JobStatus`."""

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: JobStatus | str | None, dialect: object) -> str | None:
        return None if value is None else JobStatus(value).value

    def process_result_value(self, value: str | None, dialect: object) -> JobStatus | None:
        return None if value is None else JobStatus(value)


# Jobs ---------------------------------------------------------------------------------------------


class JobBase(SQLModel):
    name: str | None = Field(default=None, max_length=128)
    queue: str = Field(max_length=32, index=True)
    priority: int = 5
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_type=StatusColumn, index=True)  # type: ignore[call-overload]
    #: Name of the user who submitted it; null for jobs from before there were users.
    owner: str | None = Field(default=None, max_length=64, index=True)
    #: The spec's `devices`, in a column of its own: admission sums them for every running job.
    devices: int = 1
    #: Whether the master may preempt it for a job of higher priority (master/fairshare/).
    preemptible: bool = False
    #: Times the master preempted it (each time it went back to `queued` without using a retry).
    preemptions: int = 0
    #: The spec's project and tags, in columns of their own to filter by (tags: see `JobTag`).
    project: str = Field(default=DEFAULT_PROJECT, max_length=128, index=True)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)
    #: The job this one re-runs with changes (POST /api/jobs/{id}/rerun).
    rerun_of: int | None = Field(default=None, index=True, sa_type=BigInteger)
    #: The sweep whose trial this job is, and the trial's number in it.
    sweep_id: int | None = Field(default=None, index=True)
    trial: int | None = None


class Job(JobBase, table=True):
    __tablename__ = "jobs"
    # The queued-jobs cap counts a user's queued jobs on a queue at every submission.
    __table_args__ = (Index("ix_jobs_owner_status_queue", "owner", "status", "queue"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    spec: dict[str, Any] = Field(sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: Number of the newest attempt; the only one whose reports may move the job.
    attempts: int = 1
    node: str | None = None
    error: str | None = Field(default=None, sa_type=Text)
    log_tail: str | None = Field(default=None, sa_type=Text)
    cancel_requested: bool = False
    #: Attempts that workers gave back on shutdown; they do not count against `max_retries`.
    handbacks: int = 0
    #: Problems the farm noticed about the job that did not end it (an event it could not apply, a
    #: log cut short, a hand-back storm), newest last; shown by `trainfarm show` and the dashboard.
    warnings: list[str] = Field(default_factory=list, sa_type=JSON)
    progress: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: The attempt the master asked to stop for a job of higher priority, until it ends.
    preempting: int | None = None
    last_preempted_at: datetime | None = None
    #: Its sweep stopped it early: the attempt's end makes it `pruned`, with no retry.
    pruning: bool = False
    #: Its end was handed to the notifier (webhooks, email): an outbox flag, so a job's end is
    #: announced once, after its state is stored, whatever the receivers do.
    notified: bool = Field(default=False, index=True)
    #: Its metric series were summarized for charts (`MetricSeries`): an outbox flag, as above.
    summarized: bool = Field(default=False, index=True)


class JobTag(SQLModel, table=True):
    """One tag of one job: the job list filters by tag through this index, not through JSON."""

    __tablename__ = "job_tags"

    tag: str = Field(primary_key=True, max_length=64)
    job_id: int = Field(primary_key=True, foreign_key="jobs.id", sa_type=BigInteger)


class JobPublic(JobBase):
    id: int
    spec: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    handbacks: int
    warnings: list[str]
    node: str | None
    error: str | None
    log_tail: str | None
    cancel_requested: bool
    progress: dict[str, Any]
    metrics: dict[str, Any]
    #: The spec, log tail, error, progress, metrics and warnings are left out: the job is someone
    #: else's and the farm runs with TRAINFARM_JOB_VISIBILITY=own.
    details_hidden: bool = False
    #: Why a queued job has not started, as admission last saw it (`waiting: ...`, `starting: ...`);
    #: null once it runs or ends.
    wait_reason: str | None = None


class JobsPublic(SQLModel):
    items: list[JobPublic]
    #: Pass as `before` to get the next (older) page; null on the last page.
    next_before: int | None


class AttemptBase(SQLModel):
    number: int
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_type=StatusColumn)  # type: ignore[call-overload]
    node: str | None = None
    #: The worker (`node#instance`) whose events this attempt's are; set by its first event.
    worker: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow)
    #: When admission let it start (master/fairshare/); its message is published right after.
    admitted_at: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    log_key: str | None = None


class JobAttempt(AttemptBase, table=True):
    __tablename__ = "job_attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "number"),
        # Admission reads the attempts it admitted that have not ended, at every decision.
        Index("ix_job_attempts_status_admitted_at", "status", "admitted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True, sa_type=BigInteger)
    #: Highest event sequence number applied: replays of older events are recognised and dropped.
    last_event_seq: int = 0
    #: Earliest time a retry may be sent (backoff).
    not_before: datetime | None = None
    info: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class AttemptPublic(AttemptBase):
    info: dict[str, Any]


class JobDetail(JobPublic):
    attempt_list: list[AttemptPublic]
    #: Jobs that re-ran this one with changes, oldest first.
    reruns: list[int] = []


# Metrics and artifacts ----------------------------------------------------------------------------


class JobMetric(SQLModel, table=True):
    __tablename__ = "job_metrics"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True, sa_type=BigInteger)
    attempt: int
    kind: str = Field(max_length=32)
    epoch: int | None = None
    step: int | None = None
    values: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    ts: datetime = Field(default_factory=utcnow)


class MetricPublic(SQLModel):
    attempt: int
    kind: str
    epoch: int | None
    step: int | None
    values: dict[str, float]
    ts: datetime


class ArtifactBase(SQLModel):
    name: str = Field(max_length=512)
    size: int = Field(sa_type=BigInteger)
    sha256: str | None = None
    attempt: int
    created_at: datetime = Field(default_factory=utcnow)


class Artifact(ArtifactBase, table=True):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True, sa_type=BigInteger)
    key: str = Field(max_length=1024)


class ArtifactPublic(ArtifactBase):
    pass


# Datasets and nodes -------------------------------------------------------------------------------


class DatasetBase(SQLModel):
    name: str = Field(max_length=128, unique=True, index=True)
    size: int = Field(sa_type=BigInteger)
    sha256: str
    created_at: datetime = Field(default_factory=utcnow)
    owner: str | None = Field(default=None, max_length=64)


class Dataset(DatasetBase, table=True):
    __tablename__ = "datasets"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=1024)
    etag: str


class DatasetPublic(DatasetBase):
    pass


class CodeBundle(SQLModel, table=True):
    """Who uploaded a code bundle (the bytes are in S3 under their digest)."""

    __tablename__ = "code_bundles"

    digest: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=BigInteger)
    owner: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class NodeBase(SQLModel):
    name: str = Field(primary_key=True, max_length=255)
    queues: list[str] = Field(default_factory=list, sa_type=JSON)
    info: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    first_seen: datetime = Field(default_factory=utcnow)
    last_seen: datetime = Field(default_factory=utcnow)


class Node(NodeBase, table=True):
    __tablename__ = "nodes"


class NodePublic(NodeBase):
    online: bool


# Users, tokens, audit --------------------------------------------------------------------------------


class UserBase(SQLModel):
    name: str = Field(max_length=64, unique=True, index=True)
    role: Role = Field(sa_type=RoleColumn)  # type: ignore[call-overload]
    #: A disabled user's tokens and sessions stop working at once; the row stays for the audit trail.
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class User(UserBase, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    #: argon2 (pwdlib); the password itself is never stored.
    password_hash: str = Field(max_length=255)


class UserPublic(UserBase):
    pass


class UserLimit(SQLModel, table=True):
    """An admin's override of the farm-wide caps for one user on one queue (null: the default)."""

    __tablename__ = "user_limits"

    user: str = Field(primary_key=True, max_length=64)
    queue: str = Field(primary_key=True, max_length=32)
    #: Most devices the user's jobs hold at once on the queue; 0: no cap.
    max_devices: int | None = None
    #: Most of the user's jobs queued at once on the queue; 0: no cap.
    max_queued: int | None = None


class UserUsage(SQLModel, table=True):
    """A user's device-seconds on a queue from attempts that ended, decayed with the farm's
    half-life to `at` (master/fairshare/usage.py); running attempts are added when it is read."""

    __tablename__ = "user_usage"

    #: "" for jobs without an owner (from before there were users).
    user: str = Field(primary_key=True, max_length=64)
    queue: str = Field(primary_key=True, max_length=32)
    value: float = 0.0
    at: datetime = Field(default_factory=utcnow)


class TokenBase(SQLModel):
    name: str = Field(max_length=64)
    #: The token's first characters (`tf_` and 6 more), so a person can tell their tokens apart.
    prefix: str = Field(max_length=16)
    #: `api` (made by hand), `login` (POST /api/auth/login) or `session` (the dashboard's cookie).
    kind: str = Field(default="api", max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiToken(TokenBase, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    #: SHA-256 of the token, hex. Tokens are 32 random bytes, so a fast hash is as safe as a slow
    #: one, and a request costs one indexed lookup rather than an argon2 run.
    digest: str = Field(max_length=64, unique=True, index=True)


class TokenPublic(TokenBase):
    id: int
    user: str


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    at: datetime = Field(default_factory=utcnow, index=True)
    #: Who did it: a user's name, or null for the farm itself and unknown users.
    actor: str | None = Field(default=None, max_length=64, index=True)
    #: What, e.g. `job.submit`, `job.cancel`, `dataset.upload`, `token.revoke`, `auth.login_failed`.
    action: str = Field(max_length=32, index=True)
    #: On what, e.g. `job 12`, `dataset digits.csv`, `user bob`.
    target: str = Field(default="", max_length=255)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: The client's address.
    address: str | None = Field(default=None, max_length=64)


class AuditEventPublic(SQLModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    target: str
    detail: dict[str, Any]
    address: str | None


class AuditPage(SQLModel):
    items: list[AuditEventPublic]
    #: Pass as `before` for the next (older) page; null on the last page.
    next_before: int | None


# Sweeps --------------------------------------------------------------------------------------------


class SweepBase(SQLModel):
    name: str = Field(max_length=128)
    owner: str | None = Field(default=None, max_length=64, index=True)
    project: str = Field(default=DEFAULT_PROJECT, max_length=128, index=True)
    #: `running`, then `succeeded` (budget spent, a best trial found), `failed` (no trial gave the
    #: objective) or `cancelled`.
    status: str = Field(default="running", max_length=16, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    best_job_id: int | None = Field(default=None, sa_type=BigInteger)
    best_trial: int | None = None
    best_value: float | None = None
    error: str | None = Field(default=None, sa_type=Text)


class Sweep(SweepBase, table=True):
    __tablename__ = "sweeps"

    id: int | None = Field(default=None, primary_key=True)
    #: The SweepSpec as submitted (shared/sweeps.py).
    spec: dict[str, Any] = Field(sa_type=JSON)
    #: Its end was handed to the notifier (see `Job.notified`).
    notified: bool = Field(default=False, index=True)


class SweepTrialBase(SQLModel):
    number: int = Field(primary_key=True)
    job_id: int | None = Field(default=None, index=True, sa_type=BigInteger)
    #: `running` (its job waits or runs), `complete`, `pruned` or `failed`: Optuna's trial states.
    state: str = Field(default="running", max_length=16)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: The objective reported so far, by epoch (or step when the job reports no epoch).
    intermediate: dict[str, float] = Field(default_factory=dict, sa_type=JSON)
    value: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class SweepTrial(SweepTrialBase, table=True):
    """One trial of a sweep: every round, the sweep's Optuna study is rebuilt from these rows, so a
    master restart loses nothing and no Optuna tables live in the farm's database."""

    __tablename__ = "sweep_trials"

    sweep_id: int = Field(primary_key=True, foreign_key="sweeps.id")
    #: What Optuna's sampler keeps on a trial (the grid sampler's grid id), as it gave them.
    system_attrs: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    #: Highest job_metrics id read into `intermediate`.
    last_metric_id: int = 0


class SweepTrialPublic(SweepTrialBase):
    job_status: str | None = None


class SweepPublic(SweepBase):
    id: int
    spec: dict[str, Any]
    #: Trials by state (`running`, `complete`, `pruned`, `failed`).
    counts: dict[str, int] = {}


class SweepDetail(SweepPublic):
    trials: list[SweepTrialPublic]


class SweepsPublic(SQLModel):
    items: list[SweepPublic]
    next_before: int | None


# Notifications -------------------------------------------------------------------------------------


class WebhookBase(SQLModel):
    owner: str | None = Field(default=None, max_length=64, index=True)
    #: Only this project's jobs and sweeps; null: all of the owner's.
    project: str | None = Field(default=None, max_length=128)
    #: `https://...` (or `http://` to a host the master may reach), or `mailto:a@b` for email.
    url: str = Field(max_length=2048)
    #: `json` (signed with HMAC-SHA256), `slack` (an incoming-webhook payload) or `email`.
    format: str = Field(default="json", max_length=16)
    #: What to announce: job.succeeded, job.failed, job.cancelled, job.pruned, sweep.ended.
    events: list[str] = Field(default_factory=list, sa_type=JSON)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class Webhook(WebhookBase, table=True):
    __tablename__ = "webhooks"

    id: int | None = Field(default=None, primary_key=True)
    #: The HMAC key, encrypted with the master's key (master/notify/): shown once, when made.
    secret: str = Field(default="", sa_type=Text)


class WebhookPublic(WebhookBase):
    id: int


class WebhookDeliveryBase(SQLModel):
    webhook_id: int = Field(foreign_key="webhooks.id", index=True)
    #: e.g. `job.succeeded`, `sweep.ended`.
    event: str = Field(max_length=32)
    #: What it is about: `job 12`, `sweep 3`.
    subject: str = Field(max_length=64)
    #: `pending` (to send, at `next_at`), `delivered` or `failed` (out of attempts).
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    #: The receiver's last HTTP status (or SMTP reply code), and the last error.
    last_code: int | None = None
    last_error: str | None = Field(default=None, sa_type=Text)


class WebhookDelivery(WebhookDeliveryBase, table=True):
    __tablename__ = "webhook_deliveries"
    # The sender reads the pending ones that are due, oldest first.
    __table_args__ = (Index("ix_webhook_deliveries_status_next_at", "status", "next_at"),)

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class WebhookDeliveryPublic(WebhookDeliveryBase):
    id: int
    payload: dict[str, Any]


# MLflow mirror -------------------------------------------------------------------------------------


class MlflowRun(SQLModel, table=True):
    """Where a job's mirror in MLflow stands (master/mlflow_mirror/): created as the job starts,
    metrics sent as they come, closed when it ends."""

    __tablename__ = "mlflow_runs"

    job_id: int = Field(primary_key=True, foreign_key="jobs.id", sa_type=BigInteger)
    run_id: str | None = Field(default=None, max_length=64)
    #: Highest job_metrics id sent.
    last_metric_id: int = 0
    #: The run is ended in MLflow (status, final tags, artifact links): nothing more to send.
    finished: bool = Field(default=False, index=True)
    attempts: int = 0
    next_at: datetime = Field(default_factory=utcnow)
    last_error: str | None = Field(default=None, sa_type=Text)


# Metric series summaries ---------------------------------------------------------------------------


class MetricSeries(SQLModel, table=True):
    """One ended job's series of one metric against one axis, downsampled once for charts
    (master/experiments/summaries.py), so a comparison need not read and parse every report."""

    __tablename__ = "metric_series"

    job_id: int = Field(primary_key=True, foreign_key="jobs.id", sa_type=BigInteger)
    #: `step` or `epoch`.
    axis: str = Field(primary_key=True, max_length=8)
    metric: str = Field(primary_key=True, max_length=128)
    #: Highest job_metrics id of the job included: a job with a higher one has reported since.
    upto_id: int = 0
    #: Points the series had before downsampling.
    stored: int = 0
    x: list[float] = Field(default_factory=list, sa_type=JSON)
    y: list[float] = Field(default_factory=list, sa_type=JSON)


# Resource use of attempts --------------------------------------------------------------------------


class JobUsage(SQLModel, table=True):
    """One sample of what an attempt used, as its worker measured it (worker/usage_sampler.py):
    its GPUs on a GPU node, else its process tree's CPU and memory. The job's summary of them
    (means, peaks, the idle flag) is in `Job.progress["usage"]` (master/job_usage.py)."""

    __tablename__ = "job_usage"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    job_id: int = Field(foreign_key="jobs.id", index=True, sa_type=BigInteger)
    attempt: int
    ts: datetime = Field(default_factory=utcnow)
    #: [{index, util (percent), mem_used, mem_total (bytes)}, ...]; null for a CPU sample.
    gpus: list[dict[str, Any]] | None = Field(default=None, sa_type=JSON)
    #: Percent of one core, summed over the job's processes; null for a GPU sample.
    cpu_percent: float | None = None
    rss: int | None = Field(default=None, sa_type=BigInteger)


class UsagePublic(SQLModel):
    attempt: int
    ts: datetime
    gpus: list[dict[str, Any]] | None
    cpu_percent: float | None
    rss: int | None
