"""Every job mirrored to a real `mlflow server` (SQLite backend, from .venv-mlflow): a real master
with a tracking URI, a real worker, jobs that report metrics; and MLflow away at first (nothing
listening at the URI until a forwarder to the server opens there), which the jobs never wait for
and the mirror catches up on."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlmodel import Session

from master.mlflow_mirror.rest import MlflowClient, MlflowRefused, MlflowUnavailable
from master.mlflow_mirror.runs import millis
from master.models import MlflowRun
from shared.settings import Settings
from tests.conftest import wait_for, wait_status
from trainfarm.services.farm import MasterProcess, WorkerProcess
from trainfarm.services.process import ManagedProcess, free_port

ON_CI = os.environ.get("CI") == "true"
PY = sys.executable
MLFLOW = Path(__file__).resolve().parent.parent / ".venv-mlflow" / "bin" / "mlflow"

#: A command job that reports metrics through the job contract (the events file) and leaves an
#: artifact: three points of two metrics at steps 10, 20, 30, and one at epoch 3 with no step.
REPORTING_JOB = textwrap.dedent(
    """
    import json, os
    with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
        for i, (loss, acc) in enumerate([(0.875, 0.5), (0.5, 0.75), (0.25, 0.875)], start=1):
            line = {"kind": "metrics", "step": 10 * i, "epoch": i - 1, "metrics": {"loss": loss, "val/acc": acc}}
            fh.write(json.dumps(line) + "\\n")
        fh.write(json.dumps({"kind": "metrics", "epoch": 3, "metrics": {"epoch_only": 1.5}}) + "\\n")
    with open(os.path.join(os.environ["TRAINFARM_OUTPUT_DIR"], "model.txt"), "w") as fh:
        fh.write("weights")
    """
)


class MlflowServer(ManagedProcess):
    """`mlflow server` on 127.0.0.1 with a SQLite store and local artifacts under `data_dir`."""

    name = "mlflow"
    ready_timeout = 120.0

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        # mlflow 3's security middleware allows localhost and private addresses by default,
        # which 127.0.0.1 is: no --allowed-hosts needed.
        return [
            str(MLFLOW), "server",
            "--backend-store-uri", f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination", str(self.data_dir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Forwarder:
    """Makes `target` reachable at 127.0.0.1:`port` from `start()` on, byte for byte: before it,
    nothing listens there, as when MLflow is down. Spares a second server's half-minute boot."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self._target = port, target
        self._listener: socket.socket | None = None

    def start(self) -> Forwarder:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by stop()
                return
            upstream = socket.create_connection(self._target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def require_mlflow() -> None:
    if not MLFLOW.is_file():
        message = f"{MLFLOW} not found (scripts/bootstrap makes it from requirements-mlflow.txt)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(f"LOUD SKIP: {message}; the MLflow mirror tests did not run")


@pytest.fixture(scope="session")
def mlflow_server(services_dir: Path) -> Iterator[MlflowServer]:
    """One MLflow server per test session (per xdist worker); each test has experiments of its own."""
    require_mlflow()
    with MlflowServer(services_dir / "mlflow") as server:
        yield server


def mirrored_master(settings: Settings, data_dir: Path, tracking_uri: str) -> MasterProcess:
    """A master that mirrors to `tracking_uri`, into experiments with a prefix of this test's own."""
    prefix = f"t-{uuid.uuid4().hex[:10]}/"
    own = settings.model_copy(
        update={"mlflow_tracking_uri": tracking_uri, "mlflow_experiment_prefix": prefix}
    )
    return MasterProcess(data_dir, own)


def reporting_spec(**extra: Any) -> dict[str, Any]:
    return {
        "command": [PY, "-c", REPORTING_JOB],
        "queue": "cpu",
        "hyperparameters": {"lr": 0.01, "layers": [64, 32], "optimizer": "adam"},
        "max_epochs": 2,
        "seed": 7,
        **extra,
    }


def finished_run(client: MlflowClient, experiment: str, job_id: int) -> dict[str, Any] | None:
    """The job's run once the mirror has closed it, else None."""
    try:
        experiment_id = client.experiment_id(experiment)
    except MlflowUnavailable:
        return None
    found = client.search_runs([experiment_id], f"tags.`trainfarm.job_id` = '{job_id}'")
    if len(found) == 1 and found[0]["info"]["status"] != "RUNNING":
        return found[0]
    assert len(found) <= 1, found
    return None


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    points = client.metric_history(run_id, key)
    return sorted((p["step"], p["value"], p["timestamp"]) for p in points)


def check_mirrored(
    client: MlflowClient, api: httpx.Client, master: MasterProcess, job_id: int, experiment: str
) -> None:
    """The job's run holds exactly its params, metrics (steps, values, times), tags and links."""
    run = wait_for(lambda: finished_run(client, experiment, job_id), what=f"job {job_id}'s run to close")
    assert isinstance(run, dict)
    job = api.get(f"/jobs/{job_id}").json()
    info, data = run["info"], run["data"]
    assert info["status"] == "FINISHED" and info["run_name"] == job["name"]
    assert info["end_time"] >= info["start_time"] > 0
    params = {p["key"]: p["value"] for p in data["params"]}
    assert params == {
        "lr": "0.01",
        "layers": "[64,32]",
        "optimizer": "adam",
        "max_epochs": "2",
        "seed": "7",
        "devices": "1",
        "queue": "cpu",
        "command": shlex.join(job["spec"]["command"]),
    }
    tags = {t["key"]: t["value"] for t in data["tags"]}
    api_url = master.settings.api_url
    assert tags["trainfarm.job_id"] == str(job_id)
    assert tags["trainfarm.owner"] == tags["mlflow.user"] == job["owner"] and job["owner"]
    assert tags["trainfarm.project"] == job["project"]
    assert tags["trainfarm.tags"] == ",".join(job["tags"])
    assert tags["trainfarm.url"] == f"{api_url}/#job-{job_id}"
    assert tags["trainfarm.status"] == "succeeded"
    assert (
        tags["trainfarm.artifact.model.txt"] == f"{api_url}/api/jobs/{job_id}/artifacts/model.txt (7 bytes)"
    )
    # The link is the master's real download route.
    assert api.get(f"/jobs/{job_id}/artifacts/model.txt").content == b"weights"
    rows = api.get(f"/jobs/{job_id}/metrics").json()
    ts = [millis(datetime.fromisoformat(row["ts"].replace("Z", "+00:00"))) for row in rows if row["values"]]
    assert len(ts) == 4
    run_id = info["run_id"]
    assert history(client, run_id, "loss") == [(10, 0.875, ts[0]), (20, 0.5, ts[1]), (30, 0.25, ts[2])]
    assert history(client, run_id, "val/acc") == [(10, 0.5, ts[0]), (20, 0.75, ts[1]), (30, 0.875, ts[2])]
    assert history(client, run_id, "epoch_only") == [(3, 1.5, ts[3])]  # no step: the epoch


def mirror_row(settings: Settings, job_id: int) -> MlflowRun | None:
    url = settings.database_url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            return session.get(MlflowRun, job_id)
    finally:
        engine.dispose()


def test_a_job_is_mirrored_with_params_metrics_tags_and_artifact_links(
    settings: Settings,
    mlflow_server: MlflowServer,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    client = MlflowClient(mlflow_server.url)
    with mirrored_master(settings, tmp_path / "master", mlflow_server.url) as master:
        prefix = master.settings.mlflow_experiment_prefix
        # A deleted experiment refuses new runs: that job is given up, noted, and the others go on.
        doomed = client.experiment_id(f"{prefix}doomed")
        httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/experiments/delete", json={"experiment_id": doomed})
        start_worker()
        with master.client(timeout=30) as api:
            refused = api.post("/jobs", json=reporting_spec(project="doomed")).json()["id"]
            spec = reporting_spec(name="mirrored", project="vision", tags=["baseline", "lr:0.01"])
            job_id = api.post("/jobs", json=spec).json()["id"]
            # No GPU node: it waits, and is cancelled before it ever starts.
            waiting = api.post("/jobs", json=reporting_spec(project="vision", queue="gpu")).json()["id"]
            assert api.post(f"/jobs/{waiting}/cancel").is_success
            for each in (refused, job_id):
                assert wait_status(api, each, {"succeeded", "failed"})["status"] == "succeeded"
            check_mirrored(client, api, master, job_id, f"{prefix}vision")
            killed = wait_for(
                lambda: finished_run(client, f"{prefix}vision", waiting), what="the cancelled run"
            )
            assert isinstance(killed, dict) and killed["info"]["status"] == "KILLED"
            assert {t["key"]: t["value"] for t in killed["data"]["tags"]}["trainfarm.status"] == "cancelled"
            assert killed["info"]["run_name"] == f"job-{waiting}" and "metrics" not in killed["data"]
        row = wait_for(lambda: (r := mirror_row(settings, refused)) and r.finished and r, what="the refusal")
        assert isinstance(row, MlflowRun)
        assert row.run_id is None and row.last_error and row.last_error.startswith("not mirrored: ")


def test_mlflow_away_at_first_never_holds_a_job_and_the_mirror_catches_up(
    settings: Settings,
    mlflow_server: MlflowServer,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    port = free_port()
    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    uri = f"http://mirror:{secret}@127.0.0.1:{port}"  # nothing listens there yet
    with mirrored_master(settings, tmp_path / "master", uri) as master, master.client(timeout=30) as api:
        start_worker()
        job_id = api.post("/jobs", json=reporting_spec(name="late", project="outage")).json()["id"]
        # The job ends on its own time: nothing in it waits for MLflow.
        assert wait_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"
        row = wait_for(
            lambda: (r := mirror_row(settings, job_id)) and r.attempts >= 1 and r, what="a failed try"
        )
        assert isinstance(row, MlflowRun)
        assert not row.finished and row.run_id is None
        assert row.last_error and "ConnectError" in row.last_error and secret not in row.last_error
        forwarder = Forwarder(port, ("127.0.0.1", mlflow_server.port)).start()
        try:
            # The mirror pings while MLflow is away and catches up once it answers, without
            # waiting out the job's backoff.
            client = MlflowClient(uri)
            prefix = master.settings.mlflow_experiment_prefix
            check_mirrored(client, api, master, job_id, f"{prefix}outage")
            assert wait_for(lambda: (r := mirror_row(settings, job_id)) and r.finished, what="the row closed")
        finally:
            forwarder.stop()
    # The tries were logged, with the tracking URI's password masked.
    log = master.log_path.read_text(errors="replace")
    assert f"mirror:***@127.0.0.1:{port}: ConnectError" in log
    assert secret not in log


def test_the_client_tells_refusals_from_outages(mlflow_server: MlflowServer) -> None:
    client = MlflowClient(mlflow_server.url)
    name = f"t-{uuid.uuid4().hex[:10]}/client"
    first = client.experiment_id(name)
    assert MlflowClient(mlflow_server.url).experiment_id(name) == first  # found, not made again
    with pytest.raises(MlflowRefused) as refused:
        client.log_batch("0" * 32, metrics=[{"key": "loss", "value": 1.0, "timestamp": 0, "step": 0}])
    assert refused.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.ping()
    away = MlflowClient(f"http://127.0.0.1:{free_port()}")
    for call in (away.ping, lambda: away.experiment_id(name)):
        with pytest.raises(MlflowUnavailable, match="ConnectError") as unavailable:
            call()
        assert unavailable.value.unreachable
