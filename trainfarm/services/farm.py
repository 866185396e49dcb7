"""The farm's own processes (master, worker, Flower), launched with a given configuration."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
from pydantic import SecretStr

from shared.settings import MASTER_ONLY, Settings, child_environment
from shared.signing import master_private_key
from trainfarm.credentials import FarmCredentials, ensure_credentials
from trainfarm.services.process import ManagedProcess, free_port


class FarmProcess(ManagedProcess):
    """A process of the farm itself, started with the farm's settings as its environment."""

    def __init__(self, data_dir: Path, settings: Settings, port: int | None = None) -> None:
        super().__init__(data_dir)
        self.port = port or free_port()
        self.settings = settings

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return child_environment(self.settings.to_env())


class MasterProcess(FarmProcess):
    """The FastAPI master under uvicorn, with a first admin (`credentials`) made before it starts."""

    name = "master"
    ready_timeout = 90.0

    def __init__(self, data_dir: Path, settings: Settings, port: int | None = None) -> None:
        super().__init__(data_dir, settings, port)
        self.settings = settings.model_copy(update={"api_port": self.port})
        self._credentials: FarmCredentials | None = None

    @property
    def credentials(self) -> FarmCredentials:
        if self._credentials is None:
            raise RuntimeError("the master has not been started: it has no credentials yet")
        return self._credentials

    @property
    def token(self) -> str:
        """The first admin's API token."""
        return self.credentials.token

    def client(self, token: str | None = None, **kwargs: object) -> httpx.Client:
        """An HTTP client for `<url>/api` carrying `token` (default: the first admin's)."""
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=f"{self.url}/api", headers=headers, **kwargs)  # type: ignore[arg-type]

    def _prepare(self) -> None:
        self._credentials = ensure_credentials(self.settings)
        # Made now rather than by the master itself, so workers started next find its public key.
        master_private_key(self.settings)
        if self.settings.metrics_token is None:
            self.settings = self.settings.model_copy(
                update={"metrics_token": SecretStr(self._credentials.metrics_token)}
            )

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "uvicorn", "master.app:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
            "--timeout-graceful-shutdown", "5",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class WorkerProcess(ManagedProcess):
    """A Celery worker, exactly as an operator starts one: `celery -A worker worker -Q ...`."""

    name = "worker"
    ready_timeout = 60.0
    stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        settings: Settings,
        queues: str = "gpu,cpu",
        concurrency: int = 1,
        pool: str = "prefork",
        node_name: str = "node-1",
    ) -> None:
        super().__init__(data_dir)
        self.name = f"worker-{node_name}"
        self.node_name = node_name
        self.settings = settings.model_copy(update={"node_name": node_name})
        self.queues, self.concurrency, self.pool = queues, concurrency, pool

    def _env(self) -> dict[str, str]:
        return child_environment(_without_master_secrets(self.settings.to_env()))

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "worker", "worker",
            "-Q", self.queues, "-c", str(self.concurrency), "-P", self.pool,
            "-n", f"{self.node_name}@%h", "--without-gossip", "--without-mingle", "-l", "info",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            return "ready." in self.log_path.read_text(errors="replace").split("=== ")[-1]
        except OSError:
            return False


class FlowerProcess(FarmProcess):
    """Flower, the Celery queue inspector, on 127.0.0.1."""

    name = "flower"
    ready_timeout = 60.0

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "worker", "flower",
            "--address=127.0.0.1", f"--port={self.port}", f"--db={self.data_dir / 'flower.db'}",
            "--persistent=True",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = child_environment(_without_master_secrets(self.settings.to_env()))
        # Flower reads FLOWER_BASIC_AUTH itself; in the environment, not the argv, so `ps` never shows it.
        if self.settings.flower_basic_auth is not None:
            env["FLOWER_BASIC_AUTH"] = self.settings.flower_basic_auth.get_secret_value()
        return env

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthcheck", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def _without_master_secrets(env: dict[str, str]) -> dict[str, str]:
    """A worker's or Flower's environment: the farm's settings less the master's own keys."""
    return {name: value for name, value in env.items() if name not in MASTER_ONLY}
