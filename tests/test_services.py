"""The service launchers start real servers, keep their data across restarts, and leave nothing running."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from urllib.parse import quote

import psutil
import pytest
import redis
from minio import Minio
from minio.error import S3Error
from redis.backoff import NoBackoff
from redis.retry import Retry

from trainfarm.services import PostgresServer, RedisServer, SeaweedS3


def require(available: bool, reason: str) -> None:
    """Skip loudly when a service is missing locally; fail under CI, where it must be installed."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def assert_gone(pid: int | None) -> None:
    assert pid is not None
    assert not psutil.pid_exists(pid)


def test_redis_stream_survives_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    with server:
        first_pid = server.pid
        client = redis.Redis.from_url(server.url)
        entry = client.xadd("jobs:1:log", {"line": "epoch 1"})
        client.close()
        server.restart()
        assert server.pid != first_pid
        assert_gone(first_pid)
        client = redis.Redis.from_url(server.url)
        assert client.xrange("jobs:1:log") == [(entry, {b"line": b"epoch 1"})]
        client.close()
        pid = server.pid
    assert not server.running
    assert_gone(pid)
    server.stop()  # idempotent


def test_redis_not_persistent_starts_empty(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis", persistent=False) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.restart()
        assert client.get("k") is None
        client.close()
    assert (
        not list((tmp_path / "redis").glob("*.aof")) and not (tmp_path / "redis" / "appendonlydir").exists()
    )


def test_redis_password_is_asked_for_and_stays_off_the_command_line(tmp_path: Path) -> None:
    password = 'pa ss"word\\'  # spaces, a quote and a backslash survive redis.conf's quoting
    with RedisServer(tmp_path / "redis", persistent=False, password=password) as server:
        assert password not in " ".join(psutil.Process(server.pid).cmdline())
        assert server.config_path.stat().st_mode & 0o777 == 0o600
        assert server.url == f"redis://:{quote(password, safe='')}@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping()
        refused = redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError):
            refused.ping()
        server.restart()  # the config file is written again, with the same password
        assert redis.Redis.from_url(server.url).ping()


def test_failed_start_reports_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = RedisServer(tmp_path / "redis", port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match=r"(?s)redis exited with code \d+ while starting.*in use"):
            server.start()
    assert not server.running


def test_seaweed_s3_roundtrip_and_restart(tmp_path: Path) -> None:
    server = SeaweedS3(tmp_path / "s3", access_key="tf-test", secret_key="tf-test-secret")
    with server:
        client = server.client()
        client.make_bucket("trainfarm")
        client.put_object("trainfarm", "runs/1/model.ckpt", io.BytesIO(b"weights"), length=7)
        pid = server.pid
    assert_gone(pid)
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{server.port}.sock"))

    # A new launcher on the same store reuses its ports (SeaweedFS remembers its master address).
    again = SeaweedS3(tmp_path / "s3", access_key="tf-test", secret_key="tf-test-secret")
    assert again.endpoint == server.endpoint
    with again:
        response = again.client().get_object("trainfarm", "runs/1/model.ckpt")
        try:
            assert response.read() == b"weights"
        finally:
            response.close()
            response.release_conn()
        wrong_secret = Minio(again.endpoint, access_key="tf-test", secret_key="nope", secure=False)
        with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
            wrong_secret.list_buckets()
        pid = again.pid
    assert_gone(pid)


@pytest.fixture
def fresh_postgres(tmp_path: Path):
    require(PostgresServer.available(), "PostgreSQL (initdb/postgres) not installed")
    server = PostgresServer(tmp_path / "pg")
    yield server
    server.destroy()


def test_postgres_data_survives_restart(fresh_postgres: PostgresServer, tmp_path: Path) -> None:
    import psycopg

    with fresh_postgres as server:
        with psycopg.connect(server.url) as conn:
            conn.execute("CREATE TABLE jobs (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO jobs VALUES (1, 'mnist')")
        first_pid = server.pid
        server.restart()
        assert_gone(first_pid)

    # A second launcher on the same data_dir reuses the cluster rather than running initdb again.
    again = PostgresServer(tmp_path / "pg")
    with again, psycopg.connect(again.url) as conn:
        assert conn.execute("SELECT id, name FROM jobs").fetchall() == [(1, "mnist")]
        pid = again.pid
    assert_gone(pid)
    assert not fresh_postgres.running
