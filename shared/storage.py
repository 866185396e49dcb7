"""S3 object storage for datasets, logs, checkpoints and artifacts (MinIO SDK; any S3 server)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from shared.errors import NotFound, StorageUnavailable
from shared.settings import Settings

#: Multipart part size: big enough for throughput, small enough to bound memory per upload.
PART_SIZE = 16 * 1024 * 1024
CHUNK = 1024 * 1024
#: S3 error codes for "no such object": a 404 for the caller, never an outage.
MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NotFound"}
#: S3 answers that mean "try again later" rather than "this will never work".
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    sha256: str | None = None


def make_s3_client(settings: Settings) -> Minio:
    return Minio(
        settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=settings.s3_secure,
        region=settings.s3_region,
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Readable(Protocol):
    """What an upload reads from: a file, or the master's bridge from a request body."""

    def read(self, n: int = -1, /) -> bytes: ...


class HashingReader:
    """Wraps a readable so the bytes that pass through are counted and hashed on the way."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self.size = 0
        self._digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.size += len(data)
        self._digest.update(data)
        return data

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def is_outage(exc: BaseException) -> bool:
    """Whether an error from the S3 SDK means the server is unreachable or failing for now."""
    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_CODES or exc.response.status >= 500
    # ServerError: a 5xx without an S3 body (a proxy in front of it); InvalidResponseError: an answer
    # that is not S3's at all. urllib3's errors cover refused connections, resets and timeouts
    # (MaxRetryError once the SDK's own retries are spent).
    outages = (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
    return isinstance(exc, outages)


@contextmanager
def translated(key: str) -> Iterator[None]:
    """SDK errors as trainfarm's: a missing object is `NotFound`, an outage `StorageUnavailable`
    (retryable: the master answers 503, workers retry); anything else, such as a refused
    credential, stays as it is, a fault to fix rather than wait out."""
    try:
        yield
    except S3Error as exc:
        if exc.code in MISSING_CODES:
            raise NotFound(f"object '{key}' not found") from exc
        if is_outage(exc):
            raise StorageUnavailable(f"storage is unavailable: S3Error {exc.code}: {exc.message}") from exc
        raise
    except Exception as exc:
        if is_outage(exc):
            raise StorageUnavailable(f"storage is unavailable: {type(exc).__name__}: {exc}") from exc
        raise


class ArtifactStore:
    """One bucket of the S3 server; keys are laid out as `datasets/`, `logs/<job>/`, `artifacts/<job>/`.

    Every call raises `NotFound` for a missing object and `StorageUnavailable` while the server is
    unreachable, never the SDK's own errors for those.
    """

    def __init__(self, client: Minio, bucket: str) -> None:
        self._s3 = client
        self.bucket = bucket

    def ensure_bucket(self) -> None:
        with translated(self.bucket):
            if self._s3.bucket_exists(self.bucket):
                return
            try:
                self._s3.make_bucket(self.bucket)
            except S3Error as exc:  # another process created it between the two calls
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        with path.open("rb") as fh:
            return self.put_open_file(key, fh)

    def put_open_file(self, key: str, fh: BinaryIO) -> ObjectInfo:
        """Upload a file already open for reading (worker/beneath.py opens a job's), from its start."""
        size = os.fstat(fh.fileno()).st_size
        digest = hashlib.sha256()
        remaining = size  # what is uploaded: a file still growing is taken as it was at the stat
        while remaining > 0 and (block := fh.read(min(1024 * 1024, remaining))):
            digest.update(block)
            remaining -= len(block)
        fh.seek(0)
        sha = digest.hexdigest()
        with translated(key):
            result = self._s3.put_object(
                self.bucket, key, fh, length=size, metadata={"sha256": sha}, part_size=PART_SIZE
            )
        return ObjectInfo(key, size, (result.etag or "").strip('"'), sha)

    def put_stream(self, key: str, reader: Readable) -> ObjectInfo:
        """Upload a stream of unknown length part by part: memory stays at one part."""
        hashing = HashingReader(reader)
        with translated(key):
            result = self._s3.put_object(self.bucket, key, hashing, length=-1, part_size=PART_SIZE)  # type: ignore[arg-type]
        return ObjectInfo(key, hashing.size, (result.etag or "").strip('"'), hashing.sha256)

    def stat(self, key: str) -> ObjectInfo:
        with translated(key):
            st = self._s3.stat_object(self.bucket, key)
        meta = st.metadata or {}
        sha = meta.get("x-amz-meta-sha256") or meta.get("X-Amz-Meta-Sha256") or meta.get("X-Amz-Meta-sha256")
        return ObjectInfo(key, st.size or 0, (st.etag or "").strip('"'), sha)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[ObjectInfo]:
        with translated(prefix):
            return [
                ObjectInfo(o.object_name or "", o.size or 0, (o.etag or "").strip('"'))
                for o in self._s3.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]

    def download(self, key: str, dest: Path) -> None:
        """Download next to `dest` and rename into place, so a reader never sees half a file."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call: two threads of one worker (threads pool) may fetch the same object.
        partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            with translated(key):
                self._s3.fget_object(self.bucket, key, str(partial))
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks. The object is opened by this call, not by the first read,
        so a missing object or an outage raises here, before a caller has begun an answer."""
        with translated(key):
            response = self._s3.get_object(self.bucket, key)

        def chunks() -> Iterator[bytes]:
            try:
                with translated(key):  # the server may go away mid-object too
                    yield from response.stream(CHUNK)
            finally:
                response.close()
                response.release_conn()

        return chunks()

    def read_text(self, key: str) -> str:
        return b"".join(self.iter_bytes(key)).decode("utf-8", errors="replace")


def code_bundle_key(digest: str) -> str:
    """Where the code bundle with this SHA-256 lives: content addressed, so written once per version."""
    return f"code/{digest}.tar.gz"
