"""The clients a worker process uses, built once per process (after any fork), never at import."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from shared.errors import RetryableError
from shared.leases import Leases
from shared.redis_client import make_redis
from shared.schemas import JobSpec
from shared.settings import Settings, get_settings
from shared.signing import Verifier
from shared.storage import ArtifactStore, make_s3_client
from shared.streams import EventBus, LogStream
from worker.backends.base import Backend
from worker.backends.process import ProcessBackend
from worker.code_bundle import CodeBundles
from worker.datasets import DatasetCache
from worker.gpu_slots import GpuSlots, node_gpu_indices
from worker.refusals import load_verifier


@dataclass
class WorkerContext:
    settings: Settings
    redis: redis.Redis
    store: ArtifactStore
    bus: EventBus
    logs: LogStream
    datasets: DatasetCache
    leases: Leases
    code: CodeBundles
    gpu_slots: GpuSlots
    process_backend: Backend
    #: Checks the master's signature on every task message.
    verifier: Verifier
    docker_backend: Backend | None = None

    def backend(self, spec: JobSpec) -> Backend:
        if spec.backend == "process":
            return self.process_backend
        if self.docker_backend is None:
            # Built on first use: a node without Docker runs process jobs all the same.
            from worker.backends.docker import DockerBackend, docker_client

            try:
                self.docker_backend = DockerBackend(docker_client(self.settings), self.settings)
            except Exception as exc:  # docker.errors.DockerException: no engine, no permission
                raise RetryableError(f"no Docker engine usable on {self.settings.node_name}: {exc}") from exc
        return self.docker_backend

    @classmethod
    def connect(cls, settings: Settings) -> WorkerContext:
        client = make_redis(settings)
        store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
        return cls(
            settings=settings,
            redis=client,
            store=store,
            bus=EventBus(client),
            logs=LogStream(client, settings.log_stream_maxlen),
            datasets=DatasetCache(store, settings.dataset_cache_dir, settings.dataset_cache_max_bytes),
            leases=Leases(client, settings.lease_ttl),
            code=CodeBundles(store, settings.code_cache_dir, settings.code_cache_max_bytes),
            gpu_slots=GpuSlots(node_gpu_indices(settings), settings.job_work_dir / "gpu-locks"),
            process_backend=ProcessBackend(settings),
            verifier=load_verifier(settings),
        )


_lock = threading.Lock()
_contexts: dict[int, WorkerContext] = {}


def current() -> WorkerContext:
    """This process's context; a forked pool child builds its own instead of sharing sockets."""
    with _lock:
        pid = os.getpid()
        if pid not in _contexts:
            _contexts[pid] = WorkerContext.connect(get_settings())
        return _contexts[pid]
