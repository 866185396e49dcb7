"""The node caches' size limits with real parts: consecutive jobs on a small dataset cache keep it under
its limit and all succeed; a running job's dataset stays while another job's download would push it
out; the code-bundle cache over real S3 keeps its limit too."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from shared.storage import ArtifactStore, code_bundle_key, make_s3_client
from tests.conftest import log_texts, upload_dataset, wait_for, wait_status
from trainfarm import bundle
from trainfarm.services.farm import WorkerProcess
from worker.cache_budget import Pins, dataset_budget
from worker.code_bundle import CodeBundles

PY = sys.executable
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: Small enough that three datasets do not fit, large enough for any one of them.
LIMIT = 300_000
#: A job that prints the size of each of its data files.
SIZES = (
    "import os; d = os.environ['TRAINFARM_DATA_DIR']; "
    "[print(n, os.path.getsize(os.path.join(d, n)), flush=True) for n in sorted(os.listdir(d))]"
)


def make_datasets(api: httpx.Client, tmp_path: Path, sizes: dict[str, int]) -> None:
    for name, size in sizes.items():
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        upload_dataset(api, path)


def dataset_info(api: httpx.Client, job_id: int) -> list[dict]:
    return api.get(f"/jobs/{job_id}").json()["attempt_list"][0]["info"]["datasets"]


@SQLITE
def test_consecutive_jobs_keep_the_dataset_cache_under_its_limit(
    api: httpx.Client, start_worker: Callable[..., WorkerProcess], settings: Settings, tmp_path: Path
) -> None:
    start_worker(overrides={"dataset_cache_max_bytes": LIMIT})
    make_datasets(api, tmp_path, {"a.bin": 120_000, "b.bin": 120_000, "c.bin": 120_000})
    budget = dataset_budget(settings.dataset_cache_dir, LIMIT)
    cached = []
    for name in ["a.bin", "b.bin", "c.bin", "b.bin", "a.bin"]:
        spec = {"command": [PY, "-c", SIZES], "datasets": [name], "queue": "cpu"}
        job_id = api.post("/jobs", json=spec).json()["id"]
        wait_status(api, job_id, {"succeeded"})
        assert f"{name} 120000" in log_texts(api, job_id)
        [info] = dataset_info(api, job_id)
        cached.append(info["cached"])
        usage = budget.usage()
        assert usage["bytes"] <= LIMIT and usage["pinned"] == 0, usage
    # c pushed a out (least recently used); b was still there; a came back by a new download.
    assert cached == [False, False, False, True, False]
    assert budget.usage()["entries"] == 2


@SQLITE
def test_a_running_jobs_dataset_stays_while_another_job_adds_one(
    api: httpx.Client, start_worker: Callable[..., WorkerProcess], settings: Settings, tmp_path: Path
) -> None:
    # Two pool processes: the jobs run side by side in separate processes sharing the cache folder.
    start_worker(overrides={"dataset_cache_max_bytes": LIMIT}, concurrency=2)
    make_datasets(api, tmp_path, {"long.bin": 200_000, "short.bin": 200_000})
    budget = dataset_budget(settings.dataset_cache_dir, LIMIT)
    release = tmp_path / "release"
    waiting = textwrap.dedent(
        f"""
        import os, pathlib, time
        print("ready", flush=True)
        while not pathlib.Path({str(release)!r}).exists():
            time.sleep(0.1)
        {SIZES}
        """
    )
    spec = {"command": [PY, "-c", waiting], "datasets": ["long.bin"], "queue": "cpu"}
    long_job = api.post("/jobs", json=spec).json()["id"]
    # "ready" comes from the job's process, which starts only after its dataset is fetched and pinned.
    wait_for(lambda: "ready" in log_texts(api, long_job), timeout=60, what="the long job to start")
    [long_entry] = [e.key for e in budget.entries()]

    spec = {"command": [PY, "-c", SIZES], "datasets": ["short.bin"], "queue": "cpu"}
    short_job = api.post("/jobs", json=spec).json()["id"]
    wait_status(api, short_job, {"succeeded"})
    assert "short.bin 200000" in log_texts(api, short_job)
    # Both would not fit: the short job's dataset went when it ended, the running job's stayed.
    assert [e.key for e in budget.entries()] == [long_entry]
    assert (budget.path(long_entry) / "long.bin").stat().st_size == 200_000
    assert api.get(f"/jobs/{long_job}").json()["status"] == "running"

    release.touch()
    wait_status(api, long_job, {"succeeded"})
    assert "long.bin 200000" in log_texts(api, long_job)
    usage = budget.usage()
    assert usage == {"bytes": 200_000, "entries": 1, "max_bytes": LIMIT, "pinned": 0}


@SQLITE
def test_the_code_bundle_cache_keeps_its_limit_over_real_storage(settings: Settings, tmp_path: Path) -> None:
    store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
    store.ensure_bucket()
    digests = []
    for i in range(3):
        project = tmp_path / f"proj{i}"
        project.mkdir()
        (project / "train.py").write_text(f"print({i})\n")
        (project / "noise.bin").write_bytes(os.urandom(50_000))  # does not compress: ~50 kB archives
        archive = bundle.scan(project, max_file_size=10**6).write(tmp_path / f"b{i}.tar.gz")
        store.put_file(code_bundle_key(archive.sha256), archive.path)
        digests.append(archive.sha256)
    bundles = CodeBundles(store, tmp_path / "code", max_bytes=120_000)

    with Pins("long attempt") as long_attempt:
        assert bundles.unpack(digests[0], tmp_path / "a0", long_attempt) == 2
        for n in (1, 2):
            assert bundles.unpack(digests[n], tmp_path / f"a{n}") == 2
            # Held by the long attempt, the first archive stays; the others take turns.
            assert (tmp_path / "code" / f"{digests[0]}.tar.gz").is_file()
            assert bundles.budget.usage()["bytes"] <= 120_000
    assert sorted(e.key for e in bundles.budget.entries()) == sorted(
        f"{d}.tar.gz" for d in (digests[0], digests[2])
    )
    assert (tmp_path / "a2" / "train.py").read_text() == "print(2)\n"
