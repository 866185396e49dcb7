"""Restarts and outages of the services a farm leans on, while jobs run; plus a small soak with a
worker killed and restarted at random moments. Nothing may be lost, nothing may run twice at once."""

from __future__ import annotations

import hashlib
import io
import itertools
import random
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import urllib3
from minio.error import S3Error, ServerError

from shared.errors import NotFound, StorageUnavailable
from shared.storage import translated
from shared.streams import log_key
from tests.conftest import DIGITS, log_texts, upload_dataset, wait_for, wait_status
from tests.test_faults import kill_tree

PY = sys.executable
#: Outages are about the services, not the database: one database is enough.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE
def test_redis_restart_during_a_job_loses_no_line_or_metric(api, worker, redis_server, tmp_path):
    # Prints on through the restart, then waits to be released: the restart happens during the job
    # however slowly it goes, never after the job has ended.
    script = textwrap.dedent(
        """
        import os, sys, time
        from worker.runtime import report
        for i in range(80):
            print("line", i, flush=True)
            report({"loss": 1.0 / (i + 1)}, step=i)
            time.sleep(0.1)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        """
    )
    release = tmp_path / "release"
    job_id = api.post("/jobs", json={"command": [PY, "-c", script, str(release)], "queue": "cpu"}).json()[
        "id"
    ]
    wait_for(lambda: "line 10" in log_texts(api, job_id), timeout=60, what="the job to print")
    redis_server.restart()  # SIGTERM: Redis writes its append-only file, then comes back with it
    release.touch()
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error"]
    assert [t for t in log_texts(api, job_id) if t.startswith("line ")] == [f"line {i}" for i in range(80)]
    assert [m["step"] for m in api.get(f"/jobs/{job_id}/metrics").json()] == list(range(80))
    assert len(job["attempt_list"]) == 1


@SQLITE
def test_s3_outage_during_artifact_upload_delivers_it_intact(api, worker, s3_server, tmp_path):
    # The job ends (and its upload starts) only once released, after S3 has gone.
    script = textwrap.dedent(
        """
        import hashlib, os, sys, time
        data = os.urandom(24 * 1024 * 1024)
        open(os.path.join(os.environ["TRAINFARM_OUTPUT_DIR"], "weights.bin"), "wb").write(data)
        print("sha256", hashlib.sha256(data).hexdigest(), flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        """
    )
    release = tmp_path / "release"
    job_id = api.post("/jobs", json={"command": [PY, "-c", script, str(release)], "queue": "cpu"}).json()[
        "id"
    ]
    wait_for(
        lambda: any(t.startswith("sha256 ") for t in log_texts(api, job_id)), timeout=60, what="the hash"
    )
    s3_server.stop()
    release.touch()
    try:
        ended = "[trainfarm] attempt 1 ended: succeeded"
        wait_for(lambda: ended in log_texts(api, job_id), timeout=60, what="the process to end")
        time.sleep(5)  # uploads are failing and retrying now
        assert api.get(f"/jobs/{job_id}").json()["status"] == "running"
    finally:
        s3_server.start()
    job = wait_status(api, job_id, {"succeeded", "failed"}, timeout=180)
    assert job["status"] == "succeeded", job["error"]
    expected = next(t for t in log_texts(api, job_id) if t.startswith("sha256 ")).split()[1]
    [artifact] = [a for a in api.get(f"/jobs/{job_id}/artifacts").json() if a["name"] == "weights.bin"]
    assert artifact["sha256"] == expected and artifact["size"] == 24 * 1024 * 1024
    download = api.get(f"/jobs/{job_id}/artifacts/weights.bin")
    assert hashlib.sha256(download.content).hexdigest() == expected


#: Holds an exclusive lock on a per-job file while it runs: a second live run of the same job
#: would fail to take it and leave a mark. A killed run's lock goes with its process.
SOAK_JOB = textwrap.dedent(
    """
    import fcntl, os, sys, time
    lock = open(os.path.join(sys.argv[1], "job-" + os.environ["TRAINFARM_JOB_ID"] + ".lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        open(os.path.join(sys.argv[1], "CONCURRENT"), "a").write(os.environ["TRAINFARM_JOB_ID"] + "\\n")
        raise
    for i in range(15):
        print("n", i, flush=True)
        time.sleep(0.05)
    """
)


@SQLITE
@pytest.mark.skipif(sys.platform == "win32", reason="the soak job's lock uses fcntl")
def test_soak_fifty_jobs_with_a_worker_killed_at_random(api, start_worker, tmp_path: Path):
    locks = tmp_path / "locks"
    locks.mkdir()
    stable = start_worker("node-stable")
    flaky = start_worker("node-flaky")
    spec = {"command": [PY, "-c", SOAK_JOB, str(locks)], "queue": "cpu", "max_retries": 10}
    ids = [job["id"] for job in api.post("/jobs/batch", json={"jobs": [spec] * 50}).json()]
    rng = random.Random(20261123)
    kills = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = api.get("/jobs", params={"status": "succeeded", "limit": 500}).json()["items"]
        if len(done) == 50:
            break
        if kills < 3 and len(done) >= 8 * (kills + 1):
            time.sleep(rng.uniform(0, 1.0))
            kill_tree(flaky.pid)  # type: ignore[arg-type]
            kills += 1
            time.sleep(rng.uniform(0.5, 2.0))
            flaky.start()
        time.sleep(0.5)
    assert kills == 3
    assert stable.running
    assert not (locks / "CONCURRENT").exists(), (locks / "CONCURRENT").read_text()
    for job_id in ids:
        job = api.get(f"/jobs/{job_id}").json()
        assert job["status"] == "succeeded", (job_id, job["error"])
        attempts = job["attempt_list"]
        for earlier, later in itertools.pairwise(attempts):
            assert later["started_at"] >= earlier["finished_at"], job_id
        last = attempts[-1]["number"]
        lines = api.get(f"/jobs/{job_id}/logs", params={"limit": 10_000}).json()["lines"]
        mine = [line["text"] for line in lines if line["attempt"] == last and line["text"].startswith("n ")]
        assert mine == [f"n {i}" for i in range(15)], job_id


def s3_error(code: str, status: int) -> S3Error:
    return S3Error(urllib3.HTTPResponse(status=status), code, "message", "/b/k", "req", "host")


@pytest.mark.parametrize(
    "error",
    [
        urllib3.exceptions.MaxRetryError(None, "/b/k", reason=ConnectionRefusedError("refused")),  # type: ignore[arg-type]
        urllib3.exceptions.ReadTimeoutError(None, "/b/k", "read timed out"),  # type: ignore[arg-type]
        urllib3.exceptions.ProtocolError("connection reset"),
        ConnectionResetError("reset by peer"),
        TimeoutError("timed out"),
        s3_error("ServiceUnavailable", 503),
        s3_error("SlowDown", 503),
        s3_error("InternalError", 500),
        ServerError("bad gateway", 502),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_unreachable_or_failing_store_is_storage_unavailable(error: Exception):
    with pytest.raises(StorageUnavailable) as raised, translated("logs/1/attempt-1.log"):
        raise error
    assert raised.value.__cause__ is error and raised.value.http_status == 503
    assert type(error).__name__ in raised.value.message  # which failure it was stays readable


def test_a_missing_object_is_not_found_and_other_faults_stay_as_they_are():
    with pytest.raises(NotFound), translated("k"):
        raise s3_error("NoSuchKey", 404)
    refused = s3_error("AccessDenied", 403)  # a wrong credential is a fault to fix, not to wait out
    with pytest.raises(S3Error) as raised, translated("k"):
        raise refused
    assert raised.value is refused
    with pytest.raises(FileNotFoundError), translated("k"):  # the local side of an upload
        raise FileNotFoundError("no such file")


def code_bundle() -> tuple[str, bytes]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        script = b"print('from the bundle')\n"
        info = tarfile.TarInfo("main.py")
        info.size = len(script)
        tar.addfile(info, io.BytesIO(script))
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest(), data


@SQLITE
def test_s3_outage_answers_503_with_retry_after_and_the_routes_work_again(
    api: httpx.Client, worker, settings, s3_server
):
    upload_dataset(api, DIGITS)
    digest, bundle = code_bundle()
    assert api.put(f"/code/{digest}", content=bundle).status_code == 201
    script = "import os; open(os.path.join(os.environ['TRAINFARM_OUTPUT_DIR'], 'out.txt'), 'w').write('hi')"
    job_id = api.post(
        "/jobs", json={"command": [PY, "-c", script + "; print('done')"], "queue": "cpu"}
    ).json()["id"]
    assert wait_status(api, job_id, {"succeeded", "failed"})["status"] == "succeeded"
    # The live copy gone, the log is read from its archive in S3.
    redis.Redis.from_url(settings.redis_url).delete(log_key(job_id))
    other_digest, other_bundle = hashlib.sha256(b"other").hexdigest(), b"other"
    with_code = {"command": [PY, "main.py"], "code": digest, "queue": "cpu"}

    def calls() -> dict[str, httpx.Response]:
        requests: dict[str, Callable[[], httpx.Response]] = {
            "artifact download": lambda: api.get(f"/jobs/{job_id}/artifacts/out.txt"),
            "archived log": lambda: api.get(f"/jobs/{job_id}/logs"),
            "dataset upload": lambda: api.post(
                "/datasets", params={"name": "new.csv"}, content=b"a,b\n1,2\n"
            ),
            "code upload": lambda: api.put(f"/code/{other_digest}", content=other_bundle),
            "code HEAD": lambda: api.head(f"/code/{digest}"),
            "code GET": lambda: api.get(f"/code/{digest}"),
            "submission with code": lambda: api.post("/jobs", json=with_code),
            "batch with code": lambda: api.post("/jobs/batch", json={"jobs": [with_code]}),
        }
        # At once: during the outage each one answers only after the master's S3 client has
        # given up retrying (seconds), and one after another they took most of a minute.
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = {name: pool.submit(request) for name, request in requests.items()}
            return {name: future.result() for name, future in futures.items()}

    s3_server.stop()
    try:
        during = calls()
    finally:
        s3_server.start()
    wrong = {
        name: (r.status_code, r.headers.get("retry-after"), r.text[:200])
        for name, r in during.items()
        if r.status_code != 503 or not r.headers.get("retry-after", "").isdigit()
    }
    assert not wrong, wrong
    for name, response in during.items():
        if response.request.method != "HEAD":
            assert response.json()["error"] == "StorageUnavailable", (name, response.text)

    after = calls()
    assert after["artifact download"].content == b"hi"
    assert "done" in [line["text"] for line in after["archived log"].json()["lines"]]
    assert after["dataset upload"].status_code == 201
    assert after["code upload"].status_code == 201
    assert after["code HEAD"].status_code == 200 and after["code GET"].json()["digest"] == digest
    assert after["submission with code"].status_code == 201
    assert after["batch with code"].status_code == 201
