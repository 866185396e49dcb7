"""Uploading an attempt's outputs, checkpoints and log; retried through storage outages."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import redis
import urllib3
from minio.error import S3Error
from tenacity import retry, retry_if_exception, stop_after_delay, wait_exponential_jitter

from shared.errors import StorageUnavailable
from shared.events import ARTIFACT_NAME_MAX, ArtifactStored
from shared.storage import ArtifactStore, ObjectInfo
from shared.streams import LogStream
from worker.beneath import open_beneath
from worker.reporter import AttemptReporter

log = logging.getLogger(__name__)

#: S3 answers that mean "try again later" rather than "this will never work".
TRANSIENT_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StorageUnavailable):  # what ArtifactStore makes of an outage
        return True
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_S3_CODES
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


storage_retry = retry(
    retry=retry_if_exception(is_transient),
    wait=wait_exponential_jitter(multiplier=0.5, max=15),
    stop=stop_after_delay(900),
    reraise=True,
)


@storage_retry
def put_file(store: ArtifactStore, key: str, path: Path, root: Path) -> ObjectInfo:
    """Upload `path`, inside a job's folder `root`, opened without following links, so the job
    cannot swap it for one of the node's files after `regular_files` looked."""
    with open_beneath(root, path) as fh:
        return store.put_open_file(key, fh)


def archive_log(
    store: ArtifactStore, logs: LogStream, job_id: int, attempt: int, path: Path, ttl: int
) -> str:
    """Upload an attempt's log file; from then on its live Redis stream may go after `ttl` seconds
    (`GET /logs` reads archived attempts from S3). A later attempt's first write keeps it again."""
    # Opened without following a link: a container job owns its attempt's folder, where the log is.
    key = put_file(store, f"logs/{job_id}/attempt-{attempt}.log", path, path.parent).key
    try:
        logs.expire(job_id, ttl, attempt)
    except redis.RedisError as exc:  # the stream stays, bounded by its budget, until a later trim
        log.warning("could not set the expiry of job %s's live log: %s", job_id, exc)
    return key


def regular_files(root: Path) -> list[Path]:
    """The plain files under `root`, sorted; symlinks are left out, so a job (in a container, say)
    cannot make the worker upload a file of the node by linking to it."""
    found: list[Path] = []
    if root.is_symlink():  # os.walk would follow it; the job made it, to point the worker elsewhere
        return found
    for folder, _dirs, names in os.walk(root):  # os.walk does not descend into linked folders
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return sorted(found)


def upload_tree(
    store: ArtifactStore,
    reporter: AttemptReporter,
    root: Path,
    job_id: int,
    note: Callable[[str], None] = lambda _line: None,
) -> int:
    """Upload every file under `root` as an artifact of the job, reporting each one; a file whose
    name no artifact can have (too long) is left out, and `note` says so in the job's log."""
    count = 0
    if not root.is_dir():
        return 0
    for path in regular_files(root):
        name = path.relative_to(root).as_posix()
        if len(name) > ARTIFACT_NAME_MAX:
            note(f"output {name[:80]}... not kept: its name is over {ARTIFACT_NAME_MAX} characters")
            continue
        info = put_file(store, f"artifacts/{job_id}/{name}", path, root)
        reporter.report(ArtifactStored(name=name, key=info.key, size=info.size, sha256=info.sha256))
        count += 1
    return count
