"""No input answers 5xx. schemathesis fuzzes the whole OpenAPI of a real master, on SQLite and
PostgreSQL, with every phase, behind auth (as an admin, so every route is reached, and its
`ignored_auth` check sends each request without the token too); beside it, the inputs that once gave
a 500 are pinned as examples."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from trainfarm.services.farm import MasterProcess

#: Its command line, from this interpreter: no reliance on where the installer put the script.
SCHEMATHESIS = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
#: Past 64 bits: what the first fuzzing run found answering 500 (an overflow in the database driver).
HUGE = 2329663515721438253721583616
#: Every check schemathesis has: the server never fails, every answer is one the OpenAPI documents
#: (status, content type, headers, body), invalid input is refused, and so on. But three, which
#: cannot hold here for reasons of the API's design, not of a bug:
#: - positive_data_acceptance: a schema-valid request may still be refused, because validity depends
#:   on state (a spec's datasets and code bundle must exist, a bundle's SHA-256 must be its digest)
#:   or on a rule across fields (exactly one of `recipe` or `command`);
#: - unsupported_method: `GET /api/jobs/batch` is `GET /api/jobs/{job_id}` with a job id that is
#:   not a number, so it is a 422 naming `job_id`, not a 405;
#: - allow_header_conformance: a 405's `Allow` is Starlette's, from the first route whose path
#:   matches (`OPTIONS /api/jobs` lists POST, not GET too).
CHECKS = [
    "--checks",
    "all",
    "--exclude-checks",
    "positive_data_acceptance,unsupported_method,allow_header_conformance",
]
#: The live-log stream of a running job never ends by design; it is fuzzed in a second run, once
#: every job has ended, so that each of its answers ends too.
STREAM = "/api/jobs/{job_id}/logs/stream"
#: The two operations that can take the fuzzer's own access away: revoking a token (ids are small
#: integers, so the coverage phase soon hits the fuzzer's own) and demoting or disabling a user (the
#: stateful phase makes a second admin with POST /api/users, after which the master no longer
#: refuses, with its 409, to disable or demote the fuzzer's). Once that happens every answer is 401
#: and the rest of the run tests nothing. A token of a second admin does not help (its id and name
#: are as easy to reach), and a lost case cannot be told from a kept one by operation alone; so the
#: main runs leave these two out and a last run fuzzes just them, with a throwaway admin of its own,
#: once nothing else is left to test. (DELETE /api/auth/session stays in: it revokes only a
#: dashboard cookie's session, never the Bearer token the fuzzer sends.)
LOCKOUT = ["DELETE /api/tokens/{token_id}", "PATCH /api/users/{name}"]
#: The operations that run argon2 on every valid case (about 50 ms each here): fuzzed in a run of
#: their own with fewer examples, so that the suite's time goes to cases that differ.
HASHING = ["POST /api/auth/login", "POST /api/auth/session", "POST /api/users"]
#: Examples per operation: the main run's, and the hashing and lock-out runs' (the suite must stay
#: under 20 minutes).
EXAMPLES, FEW_EXAMPLES = 50, 20
#: The routes of users and access (issue 10): the main run must have tested each of these prefixes.
ACCESS_ROUTES = ["/api/users", "/api/tokens", "/api/audit", "/api/auth/"]


def schemathesis(
    master: MasterProcess, report: Path, *args: str, token: str | None = None, examples: int = EXAMPLES
) -> dict:
    """One deterministic schemathesis run against the master, as the admin `token` (the first
    admin's if none); its JSON report."""
    command = [
        *SCHEMATHESIS,
        "run",
        f"{master.url}/openapi.json",
        *CHECKS,
        # On the command line only inside this test's own process tree; a throwaway farm's token.
        "--header",
        f"Authorization: Bearer {token or master.token}",
        # Derandomized (which also keeps no example database between runs): the same cases every
        # time, so CI cannot flake on a case a previous run happened to find.
        "--generation-deterministic",
        "--seed",
        "20261201",
        "--max-examples",
        str(examples),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
        *args,
    ]
    # Run in the report's folder: schemathesis keeps a crash cache in ./.schemathesis.
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=report.parent
    )
    print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
    assert done.returncode == 0, f"schemathesis found failures:\n{done.stdout[-20000:]}"
    return json.loads(report.read_text())


def cases_in(report: dict) -> int:
    return int(report["test_cases"]["generated"])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The fuzzer tries a great many wrong logins from 127.0.0.1; past the limit (429, documented)
    # the throwaway admin's own login below would be refused too.
    return settings.model_copy(update={"rate_limit_failed_logins_per_minute": 1_000_000})


def throwaway_admin(api: httpx.Client, name: str) -> str:
    """A token of a new admin, for a run that may revoke or disable whatever it holds."""
    api.post("/users", json={"name": name, "role": "admin", "password": "fuzz-lockout-pw"}).raise_for_status()
    answer = api.post("/auth/login", data={"username": name, "password": "fuzz-lockout-pw"})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


# On PostgreSQL only: what SQLite refuses with a 500 (an integer past 64 bits), PostgreSQL refuses
# too, and PostgreSQL refuses more (a NUL byte in text, found here once), so a SQLite run found
# nothing more for its minute of the suite's twenty.
# About a minute here; the suite's 180 s would leave no margin on a loaded CI machine, and the runs
# have their own 600 s bound.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_schemathesis_finds_no_server_error(
    master: MasterProcess, api: httpx.Client, tmp_path: Path, record_property: Callable[[str, object], None]
):
    main = schemathesis(
        master,
        tmp_path / "main.json",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--exclude-path",
        STREAM,
        *(arg for operation in LOCKOUT + HASHING for arg in ("--exclude-name", operation)),
    )
    hashing = schemathesis(
        master,
        tmp_path / "hashing.json",
        "--phases",
        "examples,coverage,fuzzing",
        *(arg for operation in HASHING for arg in ("--include-name", operation)),
        examples=FEW_EXAMPLES,
    )
    # The fuzzer was never locked out: its token still works (else its cases after that were 401s).
    assert api.get("/auth/me").status_code == 200
    # Every job the fuzzer made ends now (none has a worker), so every stream it opens ends.
    while queued := api.get("/jobs", params={"status": "queued", "limit": 500}).json()["items"]:
        for job in queued:
            api.post(f"/jobs/{job['id']}/cancel").raise_for_status()
    stream = schemathesis(
        master, tmp_path / "stream.json", "--phases", "examples,coverage,fuzzing", "--include-path", STREAM
    )
    lockout = schemathesis(
        master,
        tmp_path / "lockout.json",
        "--phases",
        "examples,coverage,fuzzing",
        *(arg for operation in LOCKOUT for arg in ("--include-name", operation)),
        token=throwaway_admin(api, "fuzz-lockout"),
        examples=FEW_EXAMPLES,
    )
    # Each phase ran (the examples phase has no examples to run: the schema holds none).
    for phase in ("coverage", "fuzzing", "stateful"):
        assert main["phases"][phase]["status"] == "success", main["phases"]
    assert main["operations"]["tested"] == main["operations"]["selected"] > 10
    # Every operation but the stream and the ones run apart was in the main run; access routes too.
    paths = httpx.get(f"{master.url}/openapi.json", timeout=30).json()["paths"]
    operations = {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods}
    apart = set(LOCKOUT) | set(HASHING)
    assert main["operations"]["selected"] == len(operations) - len(paths[STREAM]) - len(apart)
    for prefix in ACCESS_ROUTES:
        assert any(op.split()[1].startswith(prefix) for op in operations - apart), prefix
    assert lockout["operations"]["tested"] == lockout["operations"]["selected"] == len(LOCKOUT)
    assert hashing["operations"]["tested"] == hashing["operations"]["selected"] == len(HASHING)
    total = sum(cases_in(r) for r in (main, stream, hashing, lockout))
    print(
        f"schemathesis: {total} cases ({cases_in(main)} + {cases_in(stream)} on the stream + "
        f"{cases_in(hashing)} hashing passwords + {cases_in(lockout)} revoking and changing users), "
        "no failure"
    )
    record_property("schemathesis_cases", total)


#: (path, query) of GETs past a range; the field named is the query's one, else the path's.
OUT_OF_RANGE_GETS = [
    ("/jobs", {"before": -1114379834328370047352832}),
    ("/jobs", {"before": HUGE}),
    ("/jobs", {"queue": "cpu\x00"}),
    ("/jobs/1/metrics", {"offset": HUGE}),
    (f"/jobs/{HUGE}", {}),
    (f"/jobs/{-HUGE}", {}),
    ("/jobs/0", {}),
    (f"/jobs/{HUGE}/artifacts", {}),
    (f"/jobs/{HUGE}/logs", {}),
    ("/jobs/1/logs", {"after": f"1-{HUGE}"}),
    ("/jobs/1/logs", {"after": "1--5"}),
    ("/jobs/1/logs/stream", {"after": f"{HUGE}-0"}),
    ("/datasets/a%00b", {}),
]
#: Specs past a bound, and the field the answer must name.
OUT_OF_RANGE_SPECS = [
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"max_epochs": HUGE}, "max_epochs"),
    ({"command": ["echo", "a\x00b"]}, "command[1]"),
    ({"datasets": ["digits\x00.csv"]}, "datasets[0]"),
]


def test_out_of_range_input_is_a_422_naming_the_field(api: httpx.Client):
    api.post("/jobs", json={"command": ["true"], "queue": "cpu"}).raise_for_status()  # job 1 exists
    wrong = []
    for path, params in OUT_OF_RANGE_GETS:
        response = api.get(path, params=params)
        field = next(iter(params), None) or ("name" if "datasets" in path else "job_id")
        if response.status_code != 422 or response.json().get("field") != field:
            wrong.append((path, params, response.status_code, response.text[:300]))
    for spec, field in OUT_OF_RANGE_SPECS:
        response = api.post("/jobs", json={"command": ["true"], "queue": "cpu", **spec})
        if response.status_code != 422 or response.json().get("field") != field:
            wrong.append(("POST /jobs", spec, response.status_code, response.text[:300]))
    json_type = {"content-type": "application/json"}
    for body, status in [
        (b"{nope", 422),
        (b"\x12 N\xef\xff", 400),
        (b'{"command": ["x"], "cpus": NaN}', 422),
    ]:
        response = api.post("/jobs", content=body, headers=json_type)
        field = "cpus" if b"NaN" in body else "body"
        if response.status_code != status or response.json().get("field") != field:
            wrong.append(("POST /jobs", body, response.status_code, response.text[:300]))
    response = api.get("/jobs/1/logs/stream", headers={"Last-Event-ID": f"1-{2**64}"})
    if response.status_code != 422 or response.json().get("field") != "after":
        wrong.append(("stream", "Last-Event-ID", response.status_code, response.text[:300]))
    assert not wrong, "\n".join(map(str, wrong))
