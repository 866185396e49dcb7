"""A throwaway PostgreSQL cluster on 127.0.0.1, tuned for speed over durability (tests only)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trainfarm.services.process import ManagedProcess, free_port

#: Role and database the cluster is made for.
DB_USER = "trainfarm"
DB_NAME = "trainfarm"
#: Longest socket directory that still fits `.s.PGSQL.<port>` in a Unix socket path (108 bytes).
MAX_SOCKET_DIR = 90
#: Name prefix of the temp dirs that hold clusters the service user can't reach in `data_dir`.
TEMP_PREFIX = "trainfarm-pg-"


def find_pg_bin_dir() -> Path | None:
    """The directory holding `initdb` and `postgres`: from PATH, else the newest /usr/lib/postgresql/*."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bin_dir in [*candidates, *versions]:
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return bin_dir
    return None


def available() -> bool:
    """Whether PostgreSQL is installed here, so tests can skip (loudly) when it is not."""
    return find_pg_bin_dir() is not None


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in bin_dir.parent.name.split(".") if part.isdigit())


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged account PostgreSQL runs under when we are root (it refuses root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_current_user(cls) -> _RunAs | None:
        if sys.platform == "win32" or os.geteuid() != 0:
            return None
        import pwd  # POSIX only

        for name in ("postgres", "nobody"):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(name, entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root, but neither a `postgres` nor a `nobody` user exists")

    def prefix(self) -> list[str]:
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--"]
        return ["runuser", "-u", self.name, "--"]

    def can_enter(self, path: Path) -> bool:
        """Whether this user may traverse every directory down to `path`."""
        for part in [path, *path.parents]:
            st = part.stat()
            if not (
                st.st_mode & stat.S_IXOTH
                or (st.st_uid == self.uid and st.st_mode & stat.S_IXUSR)
                or (st.st_gid == self.gid and st.st_mode & stat.S_IXGRP)
            ):
                return False
        return True


class PostgresServer(ManagedProcess):
    """`postgres` in the foreground with a cluster made by `initdb`, trust auth, role and db `trainfarm`.

    :param data_dir: holds the cluster (`pgdata`) and `postgres.log`; a later server on the same
        directory reuses the cluster. As root, when the `postgres` user cannot reach `data_dir`,
        the cluster lives in a fresh world-traversable temp dir that `pgdata` links to.
    :param port: TCP port; a free one when omitted (kept across restarts).
    """

    name = "postgres"
    ready_timeout = 60.0
    # SIGTERM is a "smart" shutdown that waits for every client to disconnect; SIGINT doesn't.
    stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        super().__init__(data_dir)
        self.port = port or free_port()
        bin_dir = find_pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL not found: no initdb/postgres on PATH or in /usr/lib/postgresql")
        self.bin_dir = bin_dir
        self._run_as = _RunAs.for_current_user()

    @classmethod
    def available(cls) -> bool:
        return available()

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def cluster_dir(self) -> Path:
        return (self.data_dir / "pgdata").resolve()

    def _prepare(self) -> None:
        link = self.data_dir / "pgdata"
        if link.is_symlink() and not link.exists():
            link.unlink()  # its temp dir was cleaned away: start a new cluster
        if not link.exists() and self._run_as and not self._run_as.can_enter(self.data_dir.resolve()):
            home = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
            home.chmod(0o755)
            link.symlink_to(home / "pgdata")
        cluster = self.cluster_dir
        if (cluster / "PG_VERSION").is_file():
            return
        cluster.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._run_as:
            os.chown(cluster, self._run_as.uid, self._run_as.gid)
        initdb = [str(self.bin_dir / "initdb"), "-A", "trust", "-U", DB_USER, "--no-sync"]
        initdb += ["-E", "UTF8", "--locale=C", "-D", str(cluster)]
        try:
            subprocess.run(
                self._as_service_user(initdb),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cluster,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed with code {exc.returncode}{self._log_tail()}") from exc

    def _workdir(self) -> Path:
        return self.cluster_dir  # the service user may not be allowed into data_dir

    def destroy(self) -> None:
        """Stop the server and delete the cluster, including a temp dir made for it."""
        self.stop()
        link = self.data_dir / "pgdata"
        cluster = link.resolve()
        if cluster.is_dir():
            shutil.rmtree(cluster)
        if link.is_symlink():
            link.unlink()
            if cluster.parent.name.startswith(TEMP_PREFIX):
                cluster.parent.rmdir()

    def _command(self) -> list[str]:
        cluster = self.cluster_dir
        # The socket goes beside the data; a too-long path can't hold one, so then TCP only.
        socket_dir = str(cluster) if len(str(cluster)) <= MAX_SOCKET_DIR else ""
        argv = [str(self.bin_dir / "postgres"), "-D", str(cluster), "-p", str(self.port), "-k", socket_dir]
        argv += ["-c", "listen_addresses=127.0.0.1"]
        # Durability off: these clusters hold test data only.
        argv += ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
        return self._as_service_user(argv)

    def _as_service_user(self, argv: list[str]) -> list[str]:
        return [*self._run_as.prefix(), *argv] if self._run_as else argv

    def is_ready(self) -> bool:
        import psycopg  # optional dependency (extra "postgres")

        try:
            with psycopg.connect(self._admin_url, connect_timeout=2):
                return True
        except psycopg.OperationalError:  # refused, or "the database system is starting up"
            return False

    def _after_ready(self) -> None:
        import psycopg

        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    @property
    def _admin_url(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"
