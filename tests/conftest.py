"""Real services for the tests: redis-server, a SeaweedFS S3 server, PostgreSQL, the master under
uvicorn and Celery workers, each a separate process on 127.0.0.1 and free ports."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, text
from sqlmodel import SQLModel
from typer.testing import CliRunner, Result

from master.db import make_engine
from shared.settings import Settings, get_settings
from shared.signing import parse_private_key, private_key_text, public_key_text
from trainfarm.cli import app as cli_app
from trainfarm.credentials import ensure_credentials
from trainfarm.services import PostgresServer, RedisServer, SeaweedS3
from trainfarm.services.farm import MasterProcess, WorkerProcess
from trainfarm.services.postgres import available as postgres_available
from trainfarm.services.seaweed import REGION, S3Identity, worker_actions

S3_ACCESS, S3_SECRET = "trainfarm-test", "trainfarm-test-secret"
#: What workers from `start_worker` use: only the prefixes a worker needs, in every test's bucket.
S3_WORKER = S3Identity(
    "worker", "trainfarm-test-worker", "trainfarm-test-worker-secret", worker_actions("t-*")
)
#: The test farms' signing key, the same in every import of this module (pytest loads it as
#: `conftest`, tests import it as `tests.conftest`): derived, not random.
SIGNING_KEY = parse_private_key(base64.b64encode(hashlib.sha256(b"trainfarm test farms").digest()).decode())
ON_CI = os.environ.get("CI") == "true"
DIGITS = Path(__file__).resolve().parent.parent / "examples" / "datasets" / "digits.csv"
#: The built-in recipe on the digits dataset; tests override epochs, devices and the like.
DIGITS_RECIPE = {
    "recipe": "tabular-classifier",
    "datasets": ["digits.csv"],
    "hyperparameters": {"target": "digit", "lr": 0.003},
    "queue": "cpu",
}


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[RedisServer]:
    """The suite's Redis, with a password as every real farm has: each test goes through
    AUTH (its `.url`, and so `settings.redis_url`, carries the password)."""
    with RedisServer(services_dir / "redis", password=secrets.token_urlsafe(16)) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(services_dir: Path) -> Iterator[SeaweedS3]:
    # Small volumes: every test makes a bucket, and each bucket takes volumes of its own.
    with SeaweedS3(
        services_dir / "s3", S3_ACCESS, S3_SECRET, volume_size_limit_mb=32, identities=[S3_WORKER]
    ) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(services_dir: Path) -> Iterator[PostgresServer]:
    if not postgres_available():
        message = "PostgreSQL binaries (initdb, postgres) not found"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(f"LOUD SKIP: {message}; PostgreSQL tests did not run")
    server = PostgresServer(services_dir / "postgres")
    with server:
        yield server
    server.destroy()


def empty_database(request: pytest.FixtureRequest, tmp: Path, backend: str) -> str:
    """An empty database: a fresh SQLite file under `tmp`, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'master.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    engine = create_engine(server.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return server.url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test gets an empty database: a fresh SQLite file, or a fresh PostgreSQL schema."""
    return empty_database(request, tmp_path, request.param)


def farm_settings(
    data_dir: Path, redis_server: RedisServer, s3_server: SeaweedS3, database_url: str, **extra: Any
) -> Settings:
    """A farm configuration on the test services, with a bucket of its own. Fixtures that outlive
    one test build theirs with it; the `settings` fixture adds short timings and a flushed Redis."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "redis_url": redis_server.url,
        "s3_endpoint": s3_server.endpoint,
        "s3_access_key": S3_ACCESS,
        "s3_secret_key": S3_SECRET,
        "s3_bucket": f"t-{uuid.uuid4().hex[:12]}",
        # Tests make far more changes a minute than a person; the rate-limit tests set their own.
        "rate_limit_mutations_per_minute": 100_000,
        # `testserver` is the host name of FastAPI's in-process TestClient.
        "allowed_hosts": ["127.0.0.1", "localhost", "testserver"],
        # One key pair for the session's farms: the master signs with it, workers verify.
        "signing_key": private_key_text(SIGNING_KEY),
        "signing_public_key": public_key_text(SIGNING_KEY.public_key()),
    }
    return Settings(**{**values, **extra})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh SQLite database with the models' schema, for unit tests that need no other service."""
    engine = make_engine(f"sqlite:///{tmp_path / 'unit.db'}")
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path, redis_server: RedisServer, s3_server: SeaweedS3, database_url: str) -> Settings:
    """A clean farm configuration: flushed Redis, a bucket of its own, an empty database."""
    redis.Redis.from_url(redis_server.url).flushdb()
    return farm_settings(
        tmp_path / "farm",
        redis_server,
        s3_server,
        database_url,
        node_offline_after=6.0,
        heartbeat_interval=1.0,
        cancel_grace_period=5.0,
        # Short leases so lost-worker tests finish in seconds; production defaults are 15 s.
        lease_ttl=4.0,
        lease_grace=2.0,
        broker_visibility_timeout=60,
    )


def run_cli(master: MasterProcess | str, *args: str, token: str | None = None, **kwargs: Any) -> Result:
    """`trainfarm --api-url <master> ARGS` in-process, as the master's first admin unless `token`
    says otherwise; a URL instead of a master runs with no token."""
    get_settings.cache_clear()  # TRAINFARM_TOKEN is read through it
    if isinstance(master, str):
        url, token = master, token
    else:
        url, token = master.url, token or master.token
    try:
        env: dict[str, str | None] = {"TRAINFARM_TOKEN": token, **kwargs.pop("env", {})}
        result = CliRunner().invoke(cli_app, ["--api-url", url, *args], env=env, **kwargs)
    finally:
        get_settings.cache_clear()
    assert "Traceback" not in result.output, result.output
    return result


def admin_headers(settings: Settings) -> dict[str, str]:
    """The farm's first admin (made if missing, as a standalone farm does), as request headers."""
    return {"Authorization": f"Bearer {ensure_credentials(settings).token}"}


@pytest.fixture
def master(settings: Settings, tmp_path: Path) -> Iterator[MasterProcess]:
    with MasterProcess(tmp_path / "master", settings) as proc:
        yield proc


@pytest.fixture
def api(master: MasterProcess) -> Iterator[httpx.Client]:
    """The master's API as its first admin."""
    with master.client(timeout=30) as client:
        yield client


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real Celery workers on demand; all are stopped at the end of the test."""
    started: list[WorkerProcess] = []

    def start(node_name: str = "node-1", overrides: dict | None = None, **kwargs: object) -> WorkerProcess:
        # The worker identity: every test that runs a job through here shows a worker needs no more.
        worker_s3 = {"s3_access_key": S3_WORKER.access_key, "s3_secret_key": SecretStr(S3_WORKER.secret_key)}
        own = settings.model_copy(update={**worker_s3, "s3_region": REGION, **(overrides or {})})
        proc = WorkerProcess(tmp_path / node_name, own, node_name=node_name, **kwargs)  # type: ignore[arg-type]
        started.append(proc.start())
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker()


def wait_for(
    predicate: Callable[[], object], timeout: float = 60, interval: float = 0.2, what: str = ""
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


def wait_status(api: httpx.Client, job_id: int, statuses: set[str], timeout: float = 120) -> dict:
    def check() -> dict | None:
        job = api.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, what=f"job {job_id} to reach {statuses}")  # type: ignore[return-value]


def log_texts(api: httpx.Client, job_id: int) -> list[str]:
    """Every line of a job's log so far, all attempts, in order."""
    lines = api.get(f"/jobs/{job_id}/logs", params={"limit": 100_000}).json()["lines"]
    return [line["text"] for line in lines]


def ticking_job(ticks: int, interval: float) -> str:
    """Python source of a job that prints its pid, then `ticks` numbered lines `interval` s apart;
    on SIGTERM it says so and exits 0, as a trainer that saves a checkpoint first does."""
    return textwrap.dedent(
        f"""
        import os, signal, sys, time
        def stop(*_):
            print("got SIGTERM, saving", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("pid", os.getpid(), flush=True)
        for i in range({ticks}):
            print("tick", i, flush=True)
            time.sleep({interval})
        """
    )


def user_headers(admin: httpx.Client, name: str, role: str = "member") -> dict[str, str]:
    """A user made by the admin client `admin` (with a role), logged in: their request headers."""
    password = f"{name}-password-{uuid.uuid4().hex[:6]}"
    made = admin.post("/users", json={"name": name, "role": role, "password": password})
    assert made.status_code == 201, made.text
    login = admin.post("/auth/login", data={"username": name, "password": password})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def user_client(admin: httpx.Client, name: str, role: str = "member") -> httpx.Client:
    """The same master's API as a new user made by `admin`; close it (use it in `with`)."""
    return httpx.Client(base_url=str(admin.base_url), headers=user_headers(admin, name, role), timeout=30)


def upload_dataset(api: httpx.Client, path: Path, name: str | None = None) -> dict:
    with path.open("rb") as fh:
        response = api.post("/datasets", params={"name": name or path.name}, content=fh.read())
    assert response.status_code == 201, response.text
    return response.json()


# The Docker backend's engine and image (session fixtures), kept in a module of their own.
from tests.docker_support import docker_engine, docker_image  # noqa: E402, F401
