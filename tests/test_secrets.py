"""Secrets: read from a secrets folder (Docker secrets, systemd credentials), never shown, and
production refuses to start without real ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import SecretStr

from shared.settings import DEV_S3_SECRET, Settings, get_settings
from trainfarm.services.farm import MasterProcess

#: A production configuration that passes every check: real secret, TLS Redis with a password
#: and HTTPS S3 on another machine.
PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "s3_secret_key": "a-real-s3-secret",
    "s3_endpoint": "https://s3.lab.example:9000",
    "redis_url": "rediss://broker.lab.example:6380/0",
    "redis_password": "a-real-redis-password",
}


@pytest.fixture
def clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No TRAINFARM_* of the test run's own environment, and a fresh `get_settings()`."""
    for name in [n for n in os.environ if n.startswith("TRAINFARM_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def write_secrets(folder: Path, **values: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value + "\n")  # as `echo secret > file` writes it
    return folder


def test_secrets_dir_is_read_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    folder = write_secrets(
        tmp_path / "secrets",
        trainfarm_s3_secret_key="s3-from-file",
        trainfarm_redis_password="redis-from-file",
        TRAINFARM_SESSION_SECRET="session-from-file-in-capitals",  # file names match in any case
        trainfarm_signing_key="signing-from-file",
    )
    monkeypatch.setenv("TRAINFARM_SECRETS_DIR", str(folder))
    settings = get_settings()
    assert settings.s3_secret_key.get_secret_value() == "s3-from-file"  # the newline is gone
    assert settings.redis_password == SecretStr("redis-from-file")
    assert settings.session_secret == SecretStr("session-from-file-in-capitals")
    assert settings.signing_key == SecretStr("signing-from-file")

    get_settings.cache_clear()
    monkeypatch.setenv("TRAINFARM_S3_SECRET_KEY", "s3-from-env")
    assert get_settings().s3_secret_key.get_secret_value() == "s3-from-env"
    assert get_settings().redis_password == SecretStr("redis-from-file")

    # A named folder that is not there is a mistake to report, not a reason to use defaults.
    get_settings.cache_clear()
    monkeypatch.setenv("TRAINFARM_SECRETS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="TRAINFARM_SECRETS_DIR"):
        get_settings()


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"s3_secret_key": DEV_S3_SECRET}, "TRAINFARM_S3_SECRET_KEY"),
        ({"s3_secret_key": ""}, "TRAINFARM_S3_SECRET_KEY"),
        ({"redis_password": None}, "TRAINFARM_REDIS_PASSWORD"),
        ({"redis_url": "redis://broker.lab.example:6379/0"}, "TRAINFARM_REDIS_URL"),
        ({"s3_endpoint": "http://s3.lab.example:9000"}, "TRAINFARM_S3_ENDPOINT"),
        ({"s3_endpoint": "s3.lab.example:9000", "s3_secure": False}, "TRAINFARM_S3_ENDPOINT"),
        ({"broker_url": "amqp://trainfarm@rabbit.lab.example:5672/farm"}, "TRAINFARM_BROKER_URL"),
    ],
)
def test_production_refuses_each_insecure_setting_by_name(
    change: dict[str, Any], setting: str, clean_settings: None
) -> None:
    Settings(**PRODUCTION)  # the baseline passes
    with pytest.raises(ValueError) as refused:
        Settings(**{**PRODUCTION, **change})
    message = next(str(e["ctx"]["error"]) for e in refused.value.errors())  # type: ignore[attr-defined]
    assert setting in message and "\n" not in message, message
    Settings(**{**PRODUCTION, **change, "environment": "development"})  # development allows it


def test_allow_insecure_opts_out_of_the_named_checks_only(
    monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    plain = {**PRODUCTION, "redis_url": "redis://broker.lab.example:6379/0", "redis_password": None}
    plain["s3_endpoint"] = "http://s3.lab.example:9000"
    monkeypatch.setenv("TRAINFARM_ALLOW_INSECURE", '["redis", "s3"]')
    assert Settings(**plain).allow_insecure == ["redis", "s3"]
    monkeypatch.setenv("TRAINFARM_ALLOW_INSECURE", '["redis"]')
    with pytest.raises(ValueError, match="TRAINFARM_S3_ENDPOINT"):
        Settings(**plain)
    # No opt-out for a default secret.
    monkeypatch.setenv("TRAINFARM_ALLOW_INSECURE", '["redis", "s3"]')
    with pytest.raises(ValueError, match="TRAINFARM_S3_SECRET_KEY"):
        Settings(**{**plain, "s3_secret_key": DEV_S3_SECRET})
    # Loopback needs no opt-out: plain Redis and HTTP S3 that never leave the machine.
    monkeypatch.delenv("TRAINFARM_ALLOW_INSECURE")
    Settings(
        **{**PRODUCTION, "redis_url": "redis://127.0.0.1:6379/0", "s3_endpoint": "http://localhost:9000"}
    )


def test_no_secret_in_repr_str_or_json(clean_settings: None) -> None:
    secrets = {
        "s3_secret_key": "s3-secret-value",
        "redis_password": "redis-password-value",
        "session_secret": "session-secret-value-of-32-chars!!",
        "signing_key": "signing-key-value",
        "metrics_token": "metrics-token-value",
        "flower_basic_auth": "admin:flower-password-value",
        "token": "cli-token-value",
    }
    settings = Settings(
        **secrets,
        redis_url="redis://farm:url-redis-password@127.0.0.1:6379/0",
        database_url="postgresql://trainfarm:db-password-value@127.0.0.1/trainfarm",
    )
    shown = [repr(settings), str(settings), settings.model_dump_json()]
    values = [*secrets.values(), "flower-password-value", "url-redis-password", "db-password-value"]
    for text in shown:
        for value in values:
            assert value not in text, (value, text)
    # A child process still gets them whole.
    env = settings.to_env()
    assert env["TRAINFARM_S3_SECRET_KEY"] == "s3-secret-value"
    assert env["TRAINFARM_REDIS_URL"] == "redis://farm:url-redis-password@127.0.0.1:6379/0"
    assert "db-password-value" in env["TRAINFARM_DATABASE_URL"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_master_health_and_metrics_show_no_secret(settings: Settings, tmp_path: Path) -> None:
    session, metrics = "session-secret-that-is-long-enough-1234", "metrics-scrape-token-value"
    own = settings.model_copy(
        update={"session_secret": SecretStr(session), "metrics_token": SecretStr(metrics)}
    )
    redis_password = urlsplit(settings.redis_url).password or ""
    secrets = [own.s3_secret_key.get_secret_value(), session, metrics, redis_password]
    if own.signing_key is not None:
        secrets.append(own.signing_key.get_secret_value())
    with MasterProcess(tmp_path / "master", own) as master:
        health = httpx.get(f"{master.url}/api/health", timeout=30)
        scraped = httpx.get(
            f"{master.url}/metrics", headers={"Authorization": f"Bearer {metrics}"}, timeout=30
        )
        log = master.log_path.read_text()
    assert health.status_code == 200 and scraped.status_code == 200, (health.text, scraped.text[:300])
    for secret in filter(None, secrets):
        assert secret not in health.text
        assert secret not in scraped.text
        assert secret not in log, f"a secret is in the master's log: {secret[:4]}..."


def test_a_broker_beyond_this_machine_needs_tls_or_its_opt_out(clean_settings: None) -> None:
    assert Settings(**PRODUCTION, broker_url="amqps://trainfarm@rabbit.lab.example:5671/farm")
    assert Settings(**PRODUCTION, broker_url="amqp://trainfarm@127.0.0.1:5672/farm")
    plain = {**PRODUCTION, "broker_url": "amqp://trainfarm@rabbit:5672/farm"}
    assert Settings(**plain, allow_insecure=["broker"]).allow_insecure == ["broker"]
    with pytest.raises(ValueError, match="TRAINFARM_BROKER_URL"):
        Settings(**plain, allow_insecure=["redis", "s3"])
