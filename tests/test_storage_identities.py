"""The worker's S3 identity against the real SeaweedFS: what a worker does works, nothing else does."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from shared.settings import Settings
from shared.storage import ArtifactStore, make_s3_client
from tests.conftest import S3_WORKER
from trainfarm.services import SeaweedS3
from trainfarm.services.seaweed import REGION

#: What the admin puts in the bucket before the worker identity tries it.
SEEDED = {
    "datasets/digits.csv": b"a,b\n1,2\n",
    "code/abc.tar.gz": b"bundle",
    "checkpoints/7/last.ckpt": b"weights",
    "artifacts/7/model.pt": b"model",
    "logs/7/attempt-1.log": b"line\n",
    "uploads/private.bin": b"not the worker's",
}


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> str:
    """A fresh bucket named as the suite's (`t-...`, which the worker identity covers), seeded."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    admin = s3_server.client()
    admin.make_bucket(name)
    for key, data in SEEDED.items():
        admin.put_object(name, key, io.BytesIO(data), len(data))
    return name


def worker_client(s3_server: SeaweedS3) -> Minio:
    """The client a worker builds from its settings (shared.storage), with the worker's keys."""
    settings = Settings(
        s3_endpoint=s3_server.endpoint,
        s3_access_key=S3_WORKER.access_key,
        s3_secret_key=S3_WORKER.secret_key,
        s3_region=REGION,
    )
    return make_s3_client(settings)


def test_worker_identity_does_what_a_worker_does(s3_server: SeaweedS3, bucket: str, tmp_path: Path) -> None:
    store = ArtifactStore(worker_client(s3_server), bucket)
    # Inputs: a dataset and a code bundle (stat, then download), the job's last checkpoint.
    for key in ("datasets/digits.csv", "code/abc.tar.gz", "checkpoints/7/last.ckpt"):
        assert store.stat(key).size == len(SEEDED[key])
        store.download(key, tmp_path / key)
        assert (tmp_path / key).read_bytes() == SEEDED[key]
    assert [info.key for info in store.list("checkpoints/7/")] == ["checkpoints/7/last.ckpt"]
    # Outputs: an artifact, a checkpoint, an archived log (a stream of unknown length: multipart).
    out = tmp_path / "out.bin"
    out.write_bytes(b"x" * 1000)
    assert store.put_file("artifacts/8/model.pt", out).size == 1000
    assert store.put_file("checkpoints/8/last.ckpt", out).size == 1000
    assert (
        store.put_stream("logs/8/attempt-1.log", io.BytesIO(b"y" * 6 * 1024 * 1024)).size == 6 * 1024 * 1024
    )
    admin = s3_server.client()
    for key in ("artifacts/8/model.pt", "checkpoints/8/last.ckpt", "logs/8/attempt-1.log"):
        assert admin.stat_object(bucket, key).size


def _denied(action: Callable[[], object]) -> None:
    with pytest.raises(S3Error) as caught:
        result = action()
        if hasattr(result, "read"):  # a GET answers only once its body is asked for
            result.read()
        elif not isinstance(result, (str, bytes)) and hasattr(result, "__iter__"):
            list(result)
    assert caught.value.code == "AccessDenied", caught.value


def test_worker_identity_cannot_delete_overwrite_read_elsewhere_or_manage_buckets(
    s3_server: SeaweedS3, bucket: str
) -> None:
    s3 = worker_client(s3_server)
    admin = s3_server.client()
    data = io.BytesIO(b"forged")
    # Delete a dataset or a code bundle, one by one or in a batch (the batch answers per key).
    _denied(lambda: s3.remove_object(bucket, "datasets/digits.csv"))
    _denied(lambda: s3.remove_object(bucket, "code/abc.tar.gz"))
    errors = list(s3.remove_objects(bucket, [DeleteObject("datasets/digits.csv")]))
    assert [e.code for e in errors] == ["AccessDenied"]
    # Overwrite a dataset, add a code bundle, or copy a key it cannot read into one it can write.
    _denied(lambda: s3.put_object(bucket, "datasets/digits.csv", data, 6))
    _denied(lambda: s3.put_object(bucket, "code/evil.tar.gz", io.BytesIO(b"forged"), 6))
    _denied(lambda: s3.copy_object(bucket, "artifacts/9/stolen", CopySource(bucket, "uploads/private.bin")))
    # Read or list outside its read prefixes: other jobs' artifacts and logs, anything else.
    for key in ("artifacts/7/model.pt", "logs/7/attempt-1.log", "uploads/private.bin"):
        _denied(lambda key=key: s3.get_object(bucket, key))
    _denied(lambda: s3.list_objects(bucket, prefix="datasets/", recursive=True))
    _denied(lambda: s3.list_objects(bucket, recursive=True))
    # Buckets: create, delete, look up, or touch one outside the farm's name.
    _denied(lambda: s3.make_bucket(f"t-{uuid.uuid4().hex[:12]}"))
    _denied(lambda: s3.remove_bucket(bucket))
    _denied(lambda: s3.bucket_exists(bucket))
    other = f"o-{uuid.uuid4().hex[:12]}"
    admin.make_bucket(other)
    admin.put_object(other, "datasets/digits.csv", io.BytesIO(b"x"), 1)
    _denied(lambda: s3.get_object(other, "datasets/digits.csv"))
    _denied(lambda: s3.put_object(other, "artifacts/1/a", io.BytesIO(b"x"), 1))
    # Everything the admin seeded is still there, unchanged.
    for key, value in SEEDED.items():
        response = admin.get_object(bucket, key)
        assert response.read() == value, key
        response.close()
