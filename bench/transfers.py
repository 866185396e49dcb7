"""Figure 5: a 256 MB dataset download and artifact upload through trainfarm's code (the worker's
DatasetCache, its retried put_file) next to the MinIO SDK alone, same S3 server, same object."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from minio import Minio

from bench.report import Row
from bench.services import Services
from bench.stats import median
from shared.schemas import DatasetRef
from shared.storage import ArtifactStore, make_s3_client
from worker.datasets import DatasetCache
from worker.uploads import put_file

SIZE, QUICK_SIZE = 256 * 2**20, 64 * 2**20
#: Even: each side goes first equally often (the first read after an upload is the faster).
ROUNDS, QUICK_ROUNDS = 6, 2
MB = 1e6


class CountingStore(ArtifactStore):
    """The farm's store, counting the bytes its downloads bring in."""

    downloaded = 0

    def download(self, key: str, dest: Path) -> None:
        super().download(key, dest)
        self.downloaded += dest.stat().st_size


def _timed(action: Callable[[], object]) -> float:
    os.sync()  # what earlier transfers wrote goes to disk now, not during this one
    begun = time.perf_counter()
    action()
    return time.perf_counter() - begun


def _rates(seconds: list[float], size: int) -> str:
    return ", ".join(f"{size / MB / s:.0f}" for s in seconds)


def run(services: Services, quick: bool) -> list[Row]:
    settings = services.settings("transfers")
    work = settings.data_dir
    work.mkdir(parents=True, exist_ok=True)
    size = QUICK_SIZE if quick else SIZE
    source = work / "object.bin"
    with source.open("wb") as fh:  # incompressible, written in 16 MiB pieces
        for _ in range(size // (16 * 2**20)):
            fh.write(os.urandom(16 * 2**20))
    os.sync()
    client: Minio = make_s3_client(settings)
    store = CountingStore(client, settings.s3_bucket)
    store.ensure_bucket()
    bucket = settings.s3_bucket
    ref_key = "datasets/object.bin"
    up_farm, up_sdk, down_farm, down_sdk = [], [], [], []
    rounds = QUICK_ROUNDS if quick else ROUNDS
    try:
        # SeaweedFS allocates its volumes on the first writes: not part of either side's figure.
        warm = work / "warm.bin"
        warm.write_bytes(os.urandom(2**20))
        client.fput_object(bucket, "sdk/warm.bin", str(warm))
        put_file(store, "datasets/warm.bin", warm)
        for i in range(rounds):
            # Same object, same server, alternated, each side first in turn.
            uploads = [
                (up_sdk, lambda: client.fput_object(bucket, "sdk/object.bin", str(source))),
                (up_farm, lambda: put_file(store, "datasets/object.bin", source)),
            ]
            for times, upload in uploads if i % 2 == 0 else reversed(uploads):
                times.append(_timed(upload))
            target, cache = work / "sdk.bin", DatasetCache(store, work / f"cache-{i}")
            ref = DatasetRef(name="object.bin", key=ref_key, etag=store.stat(ref_key).etag)
            downloads = [
                (down_sdk, lambda t=target: client.fget_object(bucket, ref_key, str(t))),
                (down_farm, lambda c=cache, r=ref: c.fetch(r)),
            ]
            for times, download in downloads if i % 2 == 0 else reversed(downloads):
                times.append(_timed(download))
            # Both sides' copies go, so neither pays for writing back the other's dirty pages.
            target.unlink()
            if i < rounds - 1:
                shutil.rmtree(work / f"cache-{i}")
        before = store.downloaded
        cached_times = []
        for _ in range(20):
            begun = time.perf_counter()
            fetched = cache.fetch(ref)
            cached_times.append(time.perf_counter() - begun)
            assert fetched.cached
        cached_bytes = store.downloaded - before
    finally:
        for path in work.glob("cache-*"):
            shutil.rmtree(path)
        source.unlink(missing_ok=True)
    rate = lambda seconds: size / MB / median(seconds)  # noqa: E731
    cached_ms = median(cached_times) * 1000
    label = f"{size // 2**20} MiB"
    return [
        Row(
            f"5 dataset download, {label} (DatasetCache.fetch vs fget_object)",
            rate(down_farm),
            rate(down_sdk),
            "MB/s",
            "≥ 0.9x SDK",
            rate(down_farm) >= 0.9 * rate(down_sdk),
            f"median of {len(down_farm)}; runs: trainfarm {_rates(down_farm, size)}, "
            f"SDK {_rates(down_sdk, size)} MB/s",
        ),
        Row(
            f"5 artifact upload, {label} (put_file vs fput_object)",
            rate(up_farm),
            rate(up_sdk),
            "MB/s",
            "≥ 0.9x SDK",
            rate(up_farm) >= 0.9 * rate(up_sdk),
            f"trainfarm also computes the SHA-256 it stores with the object; runs: trainfarm "
            f"{_rates(up_farm, size)}, SDK {_rates(up_sdk, size)} MB/s",
        ),
        Row(
            "5 cached dataset fetch: time",
            cached_ms,
            None,
            "ms",
            "< 50 ms",
            cached_ms < 50,
            "one HEAD request to compare the ETag",
        ),
        Row("5 cached dataset fetch: bytes downloaded", cached_bytes, None, "B", "0", cached_bytes == 0),
    ]
