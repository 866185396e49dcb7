"""All configuration, read from `TRAINFARM_*` environment variables in this one place."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from ipaddress import ip_address
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import ByteSize, Field, SecretStr, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redaction import redact_url, with_password

#: The directory holding `shared/`, `master/`, `worker/`: child processes must import them from a
#: checkout as well as from an installed package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Development credentials of the embedded S3 server; refused outside development.
DEV_S3_SECRET = "trainfarm-dev-secret"


class Settings(BaseSettings):
    """Settings shared by the master, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="TRAINFARM_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".trainfarm")

    # Master
    #: May carry a password (`postgresql://user:pass@host/db`): kept out of repr and JSON dumps.
    database_url: str = Field(default="", repr=False)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    #: Base URL the CLI talks to.
    api_url: str = "http://127.0.0.1:8000"
    #: Live-log (SSE) streams one client may hold open at once; the next answers 429. Clients are
    #: told apart by address for now.
    sse_max_connections_per_client: int = Field(default=32, ge=1)

    # Users and access (master/auth/)
    #: Every route but /api/health needs a token or a dashboard session. Off only to measure what
    #: checking costs (bench/submit.py); refused in production.
    auth_enabled: bool = True
    #: `team`: every user reads every job's spec, logs, metrics and artifacts; `own`: members and
    #: viewers see only the status, queue, owner and timing of other people's jobs.
    job_visibility: Literal["team", "own"] = "team"
    #: Host names the master answers to (the Host header); anything else gets 400, so a DNS
    #: rebinding page cannot reach a farm on 127.0.0.1. Add the names users reach it by.
    allowed_hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"])
    #: Mutating requests (submit, cancel, upload, ...) one token may make per minute; a batch
    #: submission counts once.
    rate_limit_mutations_per_minute: int = Field(default=60, ge=1)
    #: Failed logins one client address may make per minute before it is refused (429) for a while.
    rate_limit_failed_logins_per_minute: int = Field(default=5, ge=1)
    #: The "minute" of both limits, in seconds: a test farm shortens it to see a limit lift.
    rate_limit_window: int = Field(default=60, ge=1, le=3600)
    #: Key that signs dashboard session cookies; every master process of a farm needs the same
    #: one. Unset in development: made once and kept in `<data_dir>/session.key`.
    session_secret: SecretStr | None = None
    #: Seconds a dashboard session lasts.
    session_ttl: int = Field(default=12 * 3600, ge=60)
    #: Days a token from `POST /api/auth/login` (`trainfarm login`) stays valid.
    login_token_days: int = Field(default=30, ge=1)
    #: Bearer token Prometheus sends to scrape /metrics (its `authorization` config), so a
    #: monitoring box needs no user account; an admin's token works too.
    metrics_token: SecretStr | None = None
    #: `user:password` Flower asks for (its --basic_auth); standalone uses the first admin's.
    flower_basic_auth: SecretStr | None = None
    #: The CLI's API token, over the one `trainfarm login` saved.
    token: SecretStr | None = None

    # Broker and streams
    #: `redis://[user[:password]@]host:port/db`, or `rediss://` for TLS. Never logged whole: see
    #: `shared.redaction.redact_url`.
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    #: Password of the Redis user (over one in the URL), so the URL can sit in a unit file or compose
    #: while the password comes from a secrets file (`<secrets dir>/trainfarm_redis_password`).
    redis_password: SecretStr | None = None
    #: CA certificate that signed the Redis server's (`rediss://`); unset: the system's CAs.
    redis_ca_file: Path | None = None
    #: Client certificate and its key, for a Redis that asks for one (`tls-auth-clients yes`).
    redis_cert_file: Path | None = None
    redis_key_file: Path | None = None
    #: Where Celery's task queues live: `amqp://user:password@host:5672/vhost` (or `amqps://` for
    #: TLS) for RabbitMQ; unset, the Redis at `redis_url`, as before. Events, logs, leases and
    #: flags stay on Redis either way. Never logged whole.
    broker_url: str | None = Field(default=None, repr=False)
    #: Password of the broker's user (over one in the URL), from a secrets file
    #: (`<secrets dir>/trainfarm_broker_password`).
    broker_password: SecretStr | None = None
    #: CA certificate that signed the RabbitMQ server's (`amqps://`); unset: the system's CAs.
    broker_ca_file: Path | None = None
    #: Upper bound on entries (each a batch of lines) kept per job log stream in Redis.
    log_stream_maxlen: int = 200_000
    log_flush_interval: float = 0.05
    #: Longest line of a job's output kept, in bytes; the rest of a longer line is cut as it is read
    #: and a marker `… [line cut: N bytes, kept M]` ends what is kept.
    log_line_max_bytes: int = Field(default=16 * 1024, ge=256)
    #: Bytes of one job's log its live Redis stream holds; older lines leave Redis (they stay in
    #: the attempt's log file and its archive in S3, which `GET /api/jobs/{id}/logs` reads).
    log_live_max_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    #: Largest log file kept, and archived to S3, per attempt; a note line marks where it was cut.
    log_archive_max_bytes: int = Field(default=1024**3, ge=64 * 1024)
    #: Seconds a job's live stream stays in Redis once its attempt's log is archived in S3.
    log_archived_ttl: int = Field(default=600, ge=1)
    #: Live log lines are dropped (still kept in the file and S3) while Redis's used memory is above
    #: this share of its maxmemory, so events, leases and the queue keep the rest.
    log_live_memory_fraction: float = Field(default=0.95, gt=0, le=1)
    #: `maxmemory` of the farm's own redis-server (standalone, tests), bytes; 0: no limit. Evicting
    #: is never allowed (`noeviction`): the queue must not lose a message.
    redis_maxmemory: int = Field(default=1024**3, ge=0)
    #: Submissions answer 503 with Retry-After once Redis's used memory is above this share of its
    #: maxmemory, before Redis would refuse writes.
    admission_redis_memory_fraction: float = Field(default=0.9, gt=0, le=1)

    # Fair share and admission (master/fairshare/)
    #: Most devices (GPUs on the gpu queue, DDP processes on cpu) one user's jobs hold at once on
    #: a queue, unless an admin set the user's own (`trainfarm users set-limits`); 0: no cap.
    user_max_devices: int = Field(default=0, ge=0)
    #: Most jobs one user may have queued on a queue; a submission beyond it answers 429. 0: no cap.
    user_max_queued: int = Field(default=2000, ge=0)
    #: Half-life of the usage fair ordering weighs, in seconds (device-seconds a week old count half).
    fairshare_half_life: float = Field(default=7 * 86400, gt=0)
    #: Whether a job that cannot start for want of devices preempts running jobs of lower priority
    #: whose spec allows it.
    preemption: bool = False
    #: Seconds after a preemption during which the same job is not preempted again.
    preemption_grace: float = Field(default=600, ge=0)
    #: Highest priority a member may give a job; above it (up to 9) is for admins.
    member_max_priority: int = Field(default=7, ge=0, le=9)
    #: Seconds between admission's full re-reads of the waiting jobs from the database, a safety net
    #: behind the changes it is told of (submissions, ends, nodes, caps).
    admission_resync_interval: float = Field(default=30.0, gt=0)

    # Resource use of running jobs (worker/usage_sampler.py, master side: idle GPUs)
    #: Seconds between a worker's samples of a running attempt's GPUs (or, on a CPU node, its
    #: process tree's CPU and memory).
    usage_sample_interval: float = Field(default=10.0, gt=0, le=3600)
    #: A running job whose GPUs' utilisation stays under this share (0..1) for `gpu_idle_after`
    #: seconds is flagged as idle (its page, a warning, the metrics); with `gpu_idle_stop` it is
    #: also cancelled, as a GPU held and left idle is one nobody else can use.
    gpu_idle_threshold: float = Field(default=0.05, ge=0, le=1)
    gpu_idle_after: float = Field(default=1800.0, gt=0)
    gpu_idle_stop: bool = False

    # Experiments (master/sweeps/, master/notify/, master/mlflow_mirror/)
    #: Seconds between the sweep driver's rounds (prune, suggest, start trials).
    sweep_interval: float = Field(default=1.0, gt=0, le=60)
    #: Tries a webhook delivery gets, with doubling waits from `webhook_retry_base` seconds (capped
    #: at an hour), before it is marked failed in its delivery log.
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_retry_base: float = Field(default=5.0, gt=0, le=3600)
    #: Seconds a receiver gets to answer one delivery.
    webhook_timeout: float = Field(default=10.0, gt=0, le=120)
    #: Whether webhooks may point at loopback, private and link-local addresses. Off, a member
    #: cannot make the master send requests into the lab's own network (its Redis, its metadata
    #: service); a standalone farm on one machine turns it on.
    webhook_allow_private: bool = False
    #: Email notifications: the SMTP server (unset: email webhooks are refused), its port, the
    #: sender, and credentials; `smtp_starttls` upgrades the connection before logging in.
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_from: str = "trainfarm@localhost"
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    #: An MLflow tracking server (`http://mlflow:5000`): every job is mirrored to a run in it, in the
    #: background. Unset: no mirror.
    mlflow_tracking_uri: str | None = Field(default=None, repr=False)
    #: The MLflow experiment jobs go to is named after their project, with this prefix.
    mlflow_experiment_prefix: str = "trainfarm/"

    # Object storage
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "trainfarm"
    s3_secret_key: SecretStr = SecretStr(DEV_S3_SECRET)
    s3_bucket: str = "trainfarm"
    s3_secure: bool = False
    s3_region: str | None = None
    #: Largest code bundle (`trainfarm submit DIR`, a .tar.gz) the master accepts.
    code_bundle_max_bytes: int = 256 * 1024 * 1024

    # Signed job messages (shared/signing.py)
    #: The master's Ed25519 private key (base64 of its 32 raw bytes, as `trainfarm admin signing-key`
    #: prints it); only the master holds it. Unset: read from `signing_key_file`, which the master
    #: makes on its first start.
    signing_key: SecretStr | None = None
    #: Where the master keeps its key when `signing_key` is unset; default `<data_dir>/signing.key`.
    signing_key_file: Path | None = None
    #: The master's public key (base64), which workers verify every task message with. Unset: read
    #: from `<data_dir>/signing.pub`, which a master on the same machine writes.
    signing_public_key: str | None = None
    #: Seconds a signed task message stays valid; an older one is refused as a replay. As long as
    #: an ended attempt's lease mark lives, so every replay meets one of the two.
    message_max_age: int = Field(default=14 * 86400, ge=60)

    # Insecure settings production refuses; this opts out of named checks: "redis" (no password
    # or plain TCP beyond loopback), "s3" (plain HTTP beyond loopback), "broker" (plain AMQP
    # beyond loopback).
    allow_insecure: list[Literal["redis", "s3", "broker"]] = Field(default_factory=list)

    # Reliability
    #: A worker renews its attempt's lease every third of this; a dead worker's attempt is declared
    #: lost after the lease expires plus `lease_grace` (default half the TTL).
    lease_ttl: float = 15.0
    lease_grace: float | None = None
    #: Seconds before Redis hands an unacknowledged task message to another worker. Leases, not
    #: this timeout, keep long jobs from running twice, so it can stay short.
    broker_visibility_timeout: int = 300
    #: Hand-backs (a worker shutting down gives its attempt back) a job gets free of its retries;
    #: past this, a hand-back counts as a failed retryable attempt, so a hand-back storm ends.
    max_handbacks: int = Field(default=10, ge=0)

    # Worker
    node_name: str = Field(default_factory=socket.gethostname)
    cache_dir: Path | None = None
    #: Size limit of the dataset cache: bytes, or a size such as "200GB" or "1.5TiB". Unset: a
    #: quarter of the file system that holds it. Least recently used datasets leave first when a new
    #: one arrives; those a running attempt uses never.
    dataset_cache_max_bytes: ByteSize | None = None
    #: The same for the code-bundle cache; unset: 5 % of its file system.
    code_cache_max_bytes: ByteSize | None = None
    work_dir: Path | None = None
    heartbeat_interval: float = 2.0
    node_offline_after: float = 15.0
    #: Seconds between the graceful stop signal and the kill of a cancelled job's processes.
    cancel_grace_period: float = 10.0
    #: The GPUs this worker hands out, e.g. "0,1"; "none" for none; unset: every GPU it detects.
    gpus: str | None = None
    #: Seconds a job that needs more free GPUs than this node has waits here before it is put back
    #: on its queue for another node to take.
    placement_wait: float = 2.0
    #: Where named `environment`s are looked up: each folder holds venvs or conda envs by name.
    #: Unset: ~/.virtualenvs and the envs folder of the conda installation the worker runs under.
    environment_dirs: list[Path] = Field(default_factory=list)
    #: A worker stops taking jobs while the disk of its work or cache dir has less free than this
    #: (MiB) or than `min_free_disk_percent` of the disk, and takes them again once there is more.
    min_free_disk_mb: int = Field(default=2048, ge=0)
    #: 0 turns the percent floor off; the larger of the two floors applies.
    min_free_disk_percent: float = Field(default=1.0, ge=0, le=100)

    # Job isolation
    #: On Linux, a worker started as root (or with CAP_SETUID/CAP_SETGID) runs process-backend jobs
    #: as this user (a name or uid), so a job cannot read the worker's files, keys or
    #: /proc/<worker>/environ. Docker jobs run as it too when the worker is root. Unset: as the
    #: worker's own user.
    job_user: str | None = None
    #: Names of the worker's environment variables passed on to jobs beyond the built-in allow-list
    #: (PATH, HOME, locale, CUDA_*, NVIDIA_*, ...); a trailing `*` matches a prefix (`NCCL_*`).
    #: `TRAINFARM_*` never passes.
    job_env_passthrough: list[str] = Field(default_factory=list)

    # Docker backend
    #: Docker engine address (e.g. unix:///run/docker.sock, npipe:////./pipe/docker_engine); unset:
    #: the engine the Docker SDK finds from DOCKER_HOST or the platform default.
    docker_host: str | None = None
    #: Extra bind mounts for every job container, "host:container[:ro]" (a shared dataset volume).
    docker_mounts: list[str] = Field(default_factory=list)
    #: Pull a job's image when the node does not have it; off where no registry can be reached.
    docker_pull: bool = True
    #: /dev/shm of a job container: PyTorch DataLoader workers and DDP exchange tensors through it.
    docker_shm_size: str = "2g"
    #: Processes (and threads) one job container may hold: a fork bomb stops there.
    docker_pids_limit: int = Field(default=4096, ge=64)
    #: Size of the writable /tmp of a job container (its root filesystem is read-only).
    docker_tmp_size: str = "4g"
    #: Memory limit of a job container whose spec gives no `memory_mb`, MiB; 0: none.
    docker_default_memory_mb: int = Field(default=16 * 1024, ge=0)

    @model_validator(mode="after")
    def _normalise(self) -> Settings:
        self.data_dir = self.data_dir.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'master.db'}"
        if self.database_url.startswith("postgresql://"):
            # SQLAlchemy would pick psycopg2; we ship psycopg 3.
            self.database_url = "postgresql+psycopg://" + self.database_url.removeprefix("postgresql://")
        if "://" in self.s3_endpoint:
            parts = urlsplit(self.s3_endpoint)
            self.s3_secure = parts.scheme == "https"
            self.s3_endpoint = parts.netloc
        self.api_url = self.api_url.rstrip("/")
        if self.lease_grace is None:
            self.lease_grace = self.lease_ttl / 2
        self.cache_dir = (self.cache_dir or self.data_dir / "cache").expanduser()
        self.work_dir = (self.work_dir or self.data_dir / "work").expanduser()
        if not self.environment_dirs:
            self.environment_dirs = default_environment_dirs()
        if self.environment == "production":
            self._refuse_insecure()
        return self

    def _refuse_insecure(self) -> None:
        """What no production process (master or worker) starts with; one line naming the setting."""
        secret = self.s3_secret_key.get_secret_value()
        if not secret or secret == DEV_S3_SECRET:
            raise ValueError("TRAINFARM_S3_SECRET_KEY must be set to a real secret in production")
        redis_host = urlsplit(self.redis_url).hostname or ""
        if "redis" not in self.allow_insecure and not is_loopback(redis_host):
            if not self.redis_has_password:
                raise ValueError(
                    f"TRAINFARM_REDIS_PASSWORD (or a password in TRAINFARM_REDIS_URL) is required in "
                    f"production for a Redis beyond this machine ({redis_host}); "
                    "TRAINFARM_ALLOW_INSECURE='[\"redis\"]' opts out"
                )
            if not self.redis_url.startswith("rediss://"):
                raise ValueError(
                    f"TRAINFARM_REDIS_URL must be rediss:// (TLS) in production for a Redis beyond "
                    f"this machine ({redis_host}); TRAINFARM_ALLOW_INSECURE='[\"redis\"]' opts out"
                )
        if self.broker_url is not None and "broker" not in self.allow_insecure:
            broker_host = urlsplit(self.broker_url).hostname or ""
            if not is_loopback(broker_host) and not self.broker_url.startswith("amqps://"):
                raise ValueError(
                    f"TRAINFARM_BROKER_URL must be amqps:// (TLS) in production for a broker beyond "
                    f"this machine ({broker_host}); TRAINFARM_ALLOW_INSECURE='[\"broker\"]' opts out"
                )
        s3_host = self.s3_endpoint.rsplit(":", 1)[0].strip("[]")
        if "s3" not in self.allow_insecure and not self.s3_secure and not is_loopback(s3_host):
            raise ValueError(
                f"TRAINFARM_S3_ENDPOINT must be https:// in production for S3 beyond this machine "
                f"({s3_host}); TRAINFARM_ALLOW_INSECURE='[\"s3\"]' opts out"
            )

    @field_serializer("database_url", "redis_url", "mlflow_tracking_uri", "broker_url", when_used="json")
    def _redact(self, url: str | None) -> str | None:
        return None if url is None else redact_url(url)

    @property
    def signing_key_path(self) -> Path:
        """Where the master keeps its key when `signing_key` is unset (read here, not fixed at
        validation: a farm's settings are copied onto another data dir)."""
        return self.signing_key_file or self.data_dir / "signing.key"

    @property
    def redis_has_password(self) -> bool:
        return self.redis_password is not None or bool(urlsplit(self.redis_url).password)

    def redis_connection_url(self) -> str:
        """The Redis URL to connect with: `redis_password`, when set, in place of the URL's."""
        if self.redis_password is None:
            return self.redis_url
        return with_password(self.redis_url, quote(self.redis_password.get_secret_value(), safe=""))

    def check_master(self) -> None:
        """What a production master refuses to start with (a worker needs none of these keys)."""
        if self.environment != "production":
            return
        if not self.auth_enabled:
            raise ValueError(
                "TRAINFARM_AUTH_ENABLED=false is refused in production: every route would be open"
            )
        if self.session_secret is None or len(self.session_secret.get_secret_value()) < 32:
            raise ValueError("TRAINFARM_SESSION_SECRET must be set (32 characters or more) in production")
        if "*" in self.allowed_hosts:
            raise ValueError(
                "TRAINFARM_ALLOWED_HOSTS must name the master's host names in production, not '*'"
            )

    def to_env(self) -> dict[str, str]:
        """These settings as the environment of a child process (master, worker, flower)."""
        # The CLI's own token is the user's, never a farm process's.
        values = self.model_dump(mode="json", exclude_none=True, exclude={"token"})
        for name in values:  # json mode masks secrets and URL passwords; a child needs them whole
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                values[name] = value.get_secret_value()
            elif name in ("database_url", "redis_url", "mlflow_tracking_uri", "broker_url"):
                values[name] = value
        # pydantic-settings reads list fields as JSON.
        return {
            f"TRAINFARM_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v)
            for k, v in values.items()
        }

    @property
    def dataset_cache_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "datasets"

    @property
    def code_cache_dir(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "code"

    @property
    def job_work_dir(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: traffic that never leaves this machine."""
    if host in ("localhost", ""):
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def default_environment_dirs() -> list[Path]:
    """virtualenvwrapper's folder, the user's conda envs, and those of the conda that runs us."""
    dirs = [Path.home() / ".virtualenvs", Path.home() / ".conda" / "envs"]
    conda_exe = os.environ.get("CONDA_EXE")  # <root>/bin/conda, or Scripts/conda.exe on Windows
    if conda_exe:
        dirs.append(Path(conda_exe).parent.parent / "envs")
    return dirs


#: Settings only the master may hold: a worker or Flower started with the farm's settings (the
#: standalone farm, test farms) gets them removed from its environment.
MASTER_ONLY = frozenset(
    {
        "TRAINFARM_SIGNING_KEY",
        "TRAINFARM_SESSION_SECRET",
        "TRAINFARM_METRICS_TOKEN",
        "TRAINFARM_FLOWER_BASIC_AUTH",
    }
)
#: Environment variables a child process never inherits from ours: the master's keys, the CLI
#: user's token, and Flower's login.
NOT_INHERITED = MASTER_ONLY | {"TRAINFARM_TOKEN", "FLOWER_BASIC_AUTH"}


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """What a farm process we start (master, worker, flower) gets: our environment (PATH, virtualenv,
    CUDA, conda) with `extra` on top, this checkout importable and output unbuffered. Not a training
    job: it gets an allow-list of the worker's environment (worker/job_environment.py)."""
    # Keys of the master and the CLI user's token never pass on by inheritance (a worker's jobs
    # would see them); a child that needs one gets it in `extra`.
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: Where Docker and Swarm mount secrets; read when it exists.
DOCKER_SECRETS_DIR = Path("/run/secrets")


def secrets_dir() -> Path | None:
    """Folder of secret files, one per setting (`trainfarm_s3_secret_key`, ...): TRAINFARM_SECRETS_DIR
    (systemd's $CREDENTIALS_DIRECTORY, say), else /run/secrets where it exists. An environment
    variable of the same setting wins over the file."""
    named = os.environ.get("TRAINFARM_SECRETS_DIR")
    if named:
        if not Path(named).is_dir():  # else every secret would silently fall back to its default
            raise ValueError(f"TRAINFARM_SECRETS_DIR={named} is not a folder")
        return Path(named)
    return DOCKER_SECRETS_DIR if DOCKER_SECRETS_DIR.is_dir() else None


@lru_cache
def get_settings() -> Settings:
    return Settings(_secrets_dir=secrets_dir())  # type: ignore[call-arg]
