"""Real services for the benchmarks, started through trainfarm.services under one throwaway directory.

Redis and S3 are shared by every figure; each figure gets its own Redis database number, S3 bucket and
SQL database, so one figure's queues, streams and rows never reach the next.
"""

from __future__ import annotations

import itertools
import secrets
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
from pydantic import SecretStr

from shared.settings import Settings, child_environment
from trainfarm.services import PostgresServer, RedisServer, SeaweedS3
from trainfarm.services.farm import MasterProcess, WorkerProcess
from trainfarm.services.postgres import available as postgres_available
from trainfarm.services.process import ManagedProcess

S3_ACCESS, S3_SECRET = "trainfarm-bench", "trainfarm-bench-secret"


class Services:
    """Redis and SeaweedFS S3 for the whole run, PostgreSQL on first use; all stopped on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stack = ExitStack()
        self._db_numbers = itertools.count(1)
        self._postgres: PostgresServer | None = None
        # With a password, as every real farm's Redis: the figures include what AUTH costs.
        self.redis = RedisServer(root / "redis", password=secrets.token_urlsafe(16))
        self.s3 = SeaweedS3(root / "s3", S3_ACCESS, S3_SECRET)

    def __enter__(self) -> Services:
        # S3 takes seconds to boot: both start at once.
        for part in (self.redis, self.s3):
            self._stack.callback(part.stop)
            part.start(wait=False)
        for part in (self.redis, self.s3):
            part.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def run(self, part: ManagedProcess) -> ManagedProcess:
        """Start a process that is stopped with the services (or earlier, by the caller)."""
        self._stack.callback(part.stop)
        return part.start()

    @property
    def postgres(self) -> PostgresServer | None:
        if self._postgres is None and postgres_available():
            self._postgres = PostgresServer(self.root / "postgres")
            self._stack.callback(self._postgres.destroy)  # its cluster may live in a temp dir of its own
            self._postgres.start()
        return self._postgres

    def database_url(self, name: str, kind: str = "sqlite") -> str:
        """A new, empty database: a SQLite file, or a PostgreSQL database of its own."""
        if kind == "sqlite":
            return f"sqlite:///{self.root / name / 'master.db'}"
        server = self.postgres
        if server is None:
            raise RuntimeError("PostgreSQL binaries (initdb, postgres) not found")
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return server.url.rsplit("/", 1)[0] + f"/{name}"

    def settings(self, name: str, database: str = "sqlite", **overrides: object) -> Settings:
        """A farm configuration of its own: Redis database, bucket, SQL database and data dir."""
        db = next(self._db_numbers)
        if db > 15:
            raise RuntimeError("out of Redis databases: a run uses at most 15 farms")
        return Settings(
            data_dir=self.root / name,
            database_url=self.database_url(name, database),
            redis_url=self.redis.url.removesuffix("/0") + f"/{db}",
            s3_endpoint=self.s3.endpoint,
            s3_access_key=S3_ACCESS,
            s3_secret_key=SecretStr(S3_SECRET),
            s3_bucket=f"bench-{name}".replace("_", "-"),
            # A benchmark's one client makes thousands of changes a minute; bench/submit.py measures
            # the limit on purpose with its own value.
            **{"rate_limit_mutations_per_minute": 10_000_000, **overrides},  # type: ignore[arg-type]
        )

    def master(self, settings: Settings) -> MasterProcess:
        proc = MasterProcess(settings.data_dir / "master", settings)
        self.run(proc)
        return proc

    def worker(self, settings: Settings, queues: str = "cpu") -> WorkerProcess:
        proc = WorkerProcess(settings.data_dir / "worker", settings, queues=queues, node_name="bench-node")
        self.run(proc)
        return proc


class PythonProcess(ManagedProcess):
    """A bench-side Python process (a baseline server or worker) with a farm's settings as environment."""

    ready_timeout = 60.0

    def __init__(
        self,
        data_dir: Path,
        name: str,
        argv: list[str],
        settings: Settings,
        ready: Callable[[PythonProcess], bool],
        url: str = "",
    ) -> None:
        super().__init__(data_dir)
        self.name = name
        self.url = url
        self._argv = argv
        self._settings = settings
        self._ready = ready

    def _command(self) -> list[str]:
        return [sys.executable, *self._argv]

    def _env(self) -> dict[str, str]:
        return child_environment(self._settings.to_env())

    def is_ready(self) -> bool:
        return self._ready(self)
