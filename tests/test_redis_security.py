"""Redis asks who is calling: the suite's Redis refuses a client without the password, an ACL user
without the dangerous commands runs a farm, and a TLS Redis that wants client certificates carries
a whole job (queue, heartbeats, events, live logs, Flower) with the password in no log."""

from __future__ import annotations

import secrets
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.celery_config import celery_config
from shared.redis_client import make_redis
from shared.settings import Settings
from tests.conftest import farm_settings, wait_for
from tests.test_end_to_end import program_lines, sse_events
from trainfarm.services import RedisServer, SeaweedS3
from trainfarm.services.farm import FlowerProcess, MasterProcess, WorkerProcess
from trainfarm.services.tls import make_certificates
from trainfarm.supervisor import StandaloneFarm

#: What a farm's Redis user may do: everything Celery and trainfarm need (INFO for the memory
#: checks), none of what wipes or reconfigures the server (FLUSHALL, CONFIG, DEBUG, KEYS, ...).
FARM_USER_RULES = ["on", "~*", "&*", "+@all", "-@dangerous", "+info"]


def once(**options: Any) -> redis.Redis:
    """A client that gives up on the first refusal (redis-py retries an AUTH failure for seconds)."""
    return redis.Redis(retry=Retry(NoBackoff(), 0), **options)


def test_the_suites_redis_refuses_a_client_without_the_password(redis_server: RedisServer) -> None:
    assert redis_server.password
    with pytest.raises(redis.AuthenticationError):
        once(host="127.0.0.1", port=redis_server.port).ping()
    with pytest.raises(redis.AuthenticationError):
        once(host="127.0.0.1", port=redis_server.port, password="not-the-password").ping()
    assert redis.Redis.from_url(redis_server.url).ping()


def test_a_standalone_farm_makes_its_redis_password_once_and_keeps_it(tmp_path: Path) -> None:
    farm = StandaloneFarm(tmp_path / "farm", Settings(), with_flower=False)
    password_file = tmp_path / "farm" / "redis.password"
    password = password_file.read_text().strip()
    assert len(password) >= 24 and password_file.stat().st_mode & 0o777 == 0o600
    assert farm.redis.password == password
    assert farm.settings.redis_password == SecretStr(password)
    assert farm.settings.redis_connection_url() == f"redis://:{password}@127.0.0.1:{farm.ports.redis}/0"
    # The master and worker get it in their environment, never on their command line.
    for part in (farm.master, farm.worker):
        assert part.settings.to_env()["TRAINFARM_REDIS_PASSWORD"] == password
        assert password not in " ".join(part._command())
    again = StandaloneFarm(tmp_path / "farm", Settings(), with_flower=False)
    assert again.redis.password == password


def test_celery_verifies_a_tls_redis_against_the_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    assert "broker_use_ssl" not in celery_config(Settings(redis_url="redis://:pw@127.0.0.1:6380/0"))
    tls = Settings(
        redis_url="rediss://:pw@127.0.0.1:6380/0",
        redis_ca_file=certs.client.ca_file,
        redis_cert_file=certs.client.cert_file,
        redis_key_file=certs.client.key_file,
    )
    # kombu's default for rediss:// without these is CERT_NONE: any server would do.
    assert celery_config(tls)["broker_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(certs.client.ca_file),
        "ssl_certfile": str(certs.client.cert_file),
        "ssl_keyfile": str(certs.client.key_file),
    }


def test_a_farm_over_tls_with_client_certificates_and_an_acl_user(
    tmp_path: Path, s3_server: SeaweedS3
) -> None:
    certs = make_certificates(tmp_path / "certs")
    admin_password, user_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    server = RedisServer(
        tmp_path / "redis",
        persistent=False,
        password=admin_password,
        tls=certs.server,
        tls_auth_clients="yes",
    )
    with server:
        # Never on the command line, where any user of the machine reads it with `ps`.
        assert admin_password not in " ".join(psutil.Process(server.pid).cmdline())
        admin = redis.Redis(**server.client_options())
        admin.acl_setuser("farm", passwords=[f"+{user_password}"], reset=True)
        admin.execute_command("ACL", "SETUSER", "farm", *FARM_USER_RULES)
        # Plain TCP is off, and TLS without a client certificate is refused.
        with pytest.raises(redis.ConnectionError):
            once(host="127.0.0.1", port=server.port, password=admin_password).ping()
        with pytest.raises(redis.ConnectionError):
            once(**{**server.client_options(), "ssl_certfile": None, "ssl_keyfile": None}).ping()

        url = f"rediss://farm:{user_password}@127.0.0.1:{server.port}/0"
        settings = farm_settings(
            tmp_path / "farm",
            server,
            s3_server,
            f"sqlite:///{tmp_path / 'master.db'}",
            redis_url=url,
            redis_ca_file=certs.client.ca_file,
            redis_cert_file=certs.client.cert_file,
            redis_key_file=certs.client.key_file,
            heartbeat_interval=1.0,
        )
        with pytest.raises(redis.exceptions.NoPermissionError):
            make_redis(settings).flushall()

        # A broker client that trusts another CA refuses this server's certificate.
        stranger = make_certificates(tmp_path / "other-ca")
        wrong_ca = settings.model_copy(update={"redis_ca_file": stranger.client.ca_file})
        broker = Celery("wrong-ca", config_source=celery_config(wrong_ca)).connection_for_write()
        with broker, pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"):
            broker.ensure_connection(max_retries=0)

        master = MasterProcess(tmp_path / "master", settings)
        worker = WorkerProcess(tmp_path / "worker", settings, node_name="tls-node")
        flower_auth = SecretStr("flower:" + secrets.token_urlsafe(8))
        flower = FlowerProcess(
            tmp_path / "flower", settings.model_copy(update={"flower_basic_auth": flower_auth})
        )
        parts = [master, worker, flower]
        try:
            for part in parts:
                part.start(wait=False)
            for part in parts:
                part.wait_ready()
            with master.client(timeout=30) as api:
                assert api.get("/health").json() == {
                    "status": "ok",
                    "database": "ok",
                    "redis": "ok",
                    "s3": "ok",
                }
                job = api.post(
                    "/jobs", json={"command": [sys.executable, "-c", "print('over tls')"], "queue": "cpu"}
                )
                assert job.status_code == 201, job.text
                events = sse_events(api, job.json()["id"], timeout=60)
                assert program_lines(events) == ["over tls"]
                assert events[-1] == ("end", {"status": "succeeded"})
                # The failed-login counter (the `limits` library, on the master's pool) counts too.
                bad = {"username": "admin", "password": "wrong"}
                assert httpx.post(f"{master.url}/api/auth/login", data=bad).status_code == 401
                assert redis.Redis(**server.client_options()).keys("LIMITS*")
                # Heartbeats travel the same way.
                nodes = wait_for(lambda: api.get("/nodes").json(), timeout=20, what="the node's heartbeat")
                assert [n["name"] for n in nodes] == ["tls-node"]  # type: ignore[union-attr]
            # Flower reads queue lengths from Redis itself, with the worker app's TLS options.
            name, password = flower_auth.get_secret_value().split(":")
            lengths = httpx.get(f"{flower.url}/api/queues/length", auth=(name, password), timeout=10)
            assert lengths.status_code == 200, lengths.text
            assert {q["name"] for q in lengths.json()["active_queues"]} >= {"cpu"}
        finally:
            for part in reversed(parts):
                part.stop()
        for part in (*parts, server):
            text = part.log_path.read_text(errors="replace")
            assert user_password not in text and admin_password not in text, part.log_path
            assert "NOPERM" not in text, f"the farm's ACL user lacks a command: {part.log_path}"
