"""A whole farm on one machine: Redis, S3, the master, a worker and Flower, under one data dir."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import SecretStr

from shared.private_files import ensure_secret
from shared.settings import DEV_S3_SECRET, Settings
from trainfarm.services import RedisServer, SeaweedS3, free_port
from trainfarm.services.farm import FlowerProcess, MasterProcess, WorkerProcess
from trainfarm.services.process import ManagedProcess
from trainfarm.services.seaweed import REGION, ensure_identity, worker_actions

log = logging.getLogger(__name__)


@dataclass
class Ports:
    """Chosen on the first start and kept in the data dir, so a restart finds the same farm."""

    api: int
    redis: int
    s3: int
    flower: int

    @classmethod
    def load(cls, path: Path, api: int | None, flower: int | None) -> Ports:
        saved = json.loads(path.read_text()) if path.exists() else {}
        ports = cls(
            api=api or saved.get("api") or 8000,
            redis=saved.get("redis") or free_port(),
            s3=saved.get("s3") or free_port(),
            flower=flower or saved.get("flower") or 5555,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(ports)))
        return ports


class StandaloneFarm:
    """Starts every part in dependency order and stops them in reverse; nothing binds beyond 127.0.0.1."""

    def __init__(
        self,
        data_dir: Path,
        base: Settings,
        api_port: int | None = None,
        flower_port: int | None = None,
        concurrency: int = 1,
        with_flower: bool = True,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.ports = Ports.load(self.data_dir / "ports.json", api_port, flower_port)
        # Even on 127.0.0.1 Redis asks for a password: any local user or a job's process could
        # otherwise read the queue, forge task messages and events, or flush everything.
        redis_password = ensure_secret(self.redis_password_file)
        # The same for S3's admin identity (the master's): the development default is public, and
        # with it any local process could delete everything. A secret set by the user is kept.
        admin_secret = base.s3_secret_key.get_secret_value()
        if admin_secret == DEV_S3_SECRET:
            admin_secret = ensure_secret(self.data_dir / "s3-admin.secret")
        self.settings = base.model_copy(
            update={
                "data_dir": self.data_dir,
                "database_url": f"sqlite:///{self.data_dir / 'master.db'}",
                "redis_url": f"redis://127.0.0.1:{self.ports.redis}/0",
                "redis_password": SecretStr(redis_password),
                "s3_secret_key": SecretStr(admin_secret),
                "s3_endpoint": f"127.0.0.1:{self.ports.s3}",
                "s3_secure": False,
                "api_url": f"http://127.0.0.1:{self.ports.api}",
                "cache_dir": self.data_dir / "cache",
                "work_dir": self.data_dir / "work",
            }
        )
        logs = self.data_dir / "logs"
        self.redis = RedisServer(self.data_dir / "redis", port=self.ports.redis, password=redis_password)
        # The master keeps the admin identity; the worker gets one that reads its inputs and
        # writes its outputs, nothing more (no delete of datasets, no buckets, no admin).
        worker_s3 = ensure_identity(
            self.data_dir / "s3-worker.json", "worker", worker_actions(base.s3_bucket)
        )
        self.s3 = SeaweedS3(
            self.data_dir / "s3",
            base.s3_access_key,
            admin_secret,
            port=self.ports.s3,
            identities=[worker_s3],
        )
        self.master = MasterProcess(logs, self.settings, port=self.ports.api)
        worker_settings = self.settings.model_copy(
            update={
                "s3_access_key": worker_s3.access_key,
                "s3_secret_key": SecretStr(worker_s3.secret_key),
                "s3_region": REGION,
            }
        )
        self.worker = WorkerProcess(
            logs, worker_settings, queues="gpu,cpu", concurrency=concurrency, node_name=base.node_name
        )
        self.flower = FlowerProcess(logs, self.settings, port=self.ports.flower) if with_flower else None
        self._started: list[ManagedProcess] = []

    @property
    def redis_password_file(self) -> Path:
        """The farm's Redis password (0600), made on the first start and kept for the next."""
        return self.data_dir / "redis.password"

    @property
    def parts(self) -> list[ManagedProcess]:
        return [p for p in (self.redis, self.s3, self.master, self.worker, self.flower) if p is not None]

    def start(self, say: Callable[[str], None] = print) -> None:
        # Redis and S3 boot in parallel (S3 takes seconds); the master needs both, the worker Redis.
        for part in (self.redis, self.s3):
            say(f"starting {part.name} ...")
            self._started.append(part.start(wait=False))
        for part in (self.redis, self.s3):
            part.wait_ready()
        for service in (self.master, self.worker, self.flower):
            if service is None:
                continue
            if service is self.flower and service.settings.flower_basic_auth is None:
                # Flower asks for the first admin's name and password (made as the master started).
                auth = SecretStr(self.master.credentials.flower_basic_auth)
                service.settings = service.settings.model_copy(update={"flower_basic_auth": auth})
            say(f"starting {service.name} ...")
            self._started.append(service.start())

    def dead_part(self) -> ManagedProcess | None:
        return next((p for p in self._started if not p.running), None)

    def wait(self, poll: float = 1.0) -> ManagedProcess:
        """Block until one part exits on its own, and return it."""
        while (dead := self.dead_part()) is None:
            time.sleep(poll)
        return dead

    def stop(self, say: Callable[[str], None] = print) -> None:
        for part in reversed(self._started):
            say(f"stopping {part.name} ...")
            try:
                part.stop()
            except Exception as exc:  # keep stopping the others; report what failed
                say(f"could not stop {part.name} cleanly: {exc}")
        self._started.clear()
