"""Malformed events cannot stall the farm: the worker turns a job's bad events-file lines into
warnings in its log, and the master dead-letters bad stream entries (a fault injected straight
into Redis, past the worker) and goes on with the rest, over real processes."""

from __future__ import annotations

import json
import sys
import textwrap

import httpx
import redis

from shared.streams import DEAD_EVENTS_KEY, EVENTS_GROUP, EVENTS_KEY
from tests.conftest import log_texts, wait_for, wait_status

PY = sys.executable

#: Ten lines a job might write that are not events, one of each shape.
MALFORMED = textwrap.dedent(
    """
    import json, os
    from worker.runtime import report
    lines = [
        '{"kind": "metrics", "metrics": {"loss": "x"}}',
        '{"kind": "metrics", "metrics": {"loss": null}}',
        '{"kind": "metrics", "metrics": {"loss": [1, 2]}}',
        '{"kind": "metrics", "metrics": {"loss": ' + str(10**400) + '}}',
        '{"kind": "metrics", "step": "three"}',
        'this is not json',
        '{"kind": "metrics", "metrics": {"loss": 1' + '0' * (2 * 1024 * 1024) + '}}',
        '{"kind": "exploded", "metrics": {}}',
        '[1, 2, 3]',
        'null',
    ]
    with open(os.environ["TRAINFARM_EVENTS_FILE"], "a") as fh:
        for line in lines:
            fh.write(line + "\\n")
    report({"loss": 0.25}, step=1, epoch=1)
    print("done", flush=True)
    """
)


def test_malformed_event_lines_become_log_warnings_and_the_farm_goes_on(api, master, worker):
    first = api.post("/jobs", json={"command": [PY, "-c", MALFORMED], "queue": "cpu"}).json()["id"]
    job = wait_status(api, first, {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"] == {"loss": 0.25}  # the good line after the bad ones arrived
    warnings = [t for t in log_texts(api, first) if "events file line" in t]
    assert len(warnings) == 10, warnings
    assert warnings[0].startswith("[trainfarm] events file line 1 ignored: metrics.loss")
    assert any("longer than" in w for w in warnings)
    assert job["warnings"] == []  # the worker caught them all: none reached the master

    master.stop()
    master.start()
    second = api.post("/jobs", json={"command": [PY, "-c", "print('fine')"], "queue": "cpu"}).json()["id"]
    assert wait_status(api, second, {"succeeded", "failed"}, timeout=90)["status"] == "succeeded"
    assert api.get(f"/jobs/{first}").json()["status"] == "succeeded"


def _event(job_id: int, seq: int, kind: str, data: dict) -> str:
    return json.dumps(
        {"job_id": job_id, "attempt": 1, "seq": seq, "node": "injected", "kind": kind, "data": data}
    )


def test_bad_stream_entries_are_dead_lettered_and_the_rest_applied(api, master, settings):
    job_id = api.post("/jobs", json={"command": [PY, "-c", "pass"], "queue": "cpu"}).json()["id"]
    broker = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    master.stop()  # so that everything injected is read in one batch
    bad = [
        _event(job_id, 2, "metrics", {"kind": "metrics", "metrics": {"loss": "x"}}),
        _event(job_id, 3, "metrics", {"kind": "metrics", "metrics": {"loss": 10**400}}),
        _event(job_id, 4, "teleported", {}),
        "{not json",
    ]
    good = [
        _event(job_id, 1, "started", {"pid": 1}),
        _event(job_id, 5, "metrics", {"kind": "metrics", "step": 7, "metrics": {"loss": 0.5}}),
    ]
    for raw in [good[0], *bad, good[1]]:
        broker.xadd(EVENTS_KEY, {"event": raw})
    master.start()

    # The good event after the bad ones, in the same batch, is applied.
    wait_for(lambda: api.get(f"/jobs/{job_id}").json()["metrics"] == {"loss": 0.5}, what="the good event")
    dead = broker.xrange(DEAD_EVENTS_KEY)
    assert len(dead) == 4
    assert all(fields["reason"].startswith("invalid event") for _, fields in dead)
    assert "metrics.data.metrics.loss" in dead[0][1]["reason"]
    assert [fields["event"] for _, fields in dead] == bad
    assert broker.xpending(EVENTS_KEY, EVENTS_GROUP)["pending"] == 0  # all acknowledged
    warnings = api.get(f"/jobs/{job_id}").json()["warnings"]
    assert len(warnings) == 3 and "metrics.data.metrics.loss" in warnings[0]  # "{not json" names no job
    scrape = httpx.get(
        f"{master.url}/metrics", headers={"Authorization": f"Bearer {master.credentials.metrics_token}"}
    ).text
    assert 'trainfarm_events_dead_lettered_total{reason="invalid"} 4.0' in scrape

    # The lease check still runs: the injected "started" has no worker renewing a lease, so the
    # attempt is declared lost and retried.
    wait_for(lambda: api.get(f"/jobs/{job_id}").json()["attempts"] == 2, what="the lost attempt retried")
    assert broker.xlen(DEAD_EVENTS_KEY) == 4
