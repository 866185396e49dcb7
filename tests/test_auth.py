"""Who may do what on the master: credentials on every route, roles, ownership, job visibility,
tokens, the audit trail, the dashboard's session cookie, rate limits and host checks.

Most cases run against one in-process app per database backend, shared by the module (real Redis,
S3 and database): a second app on the same database runs with TRAINFARM_JOB_VISIBILITY=own, as a
second master of the farm would. The rate limits run against two real master processes.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select, update
from sqlmodel import Session, SQLModel, col

from master.app import create_app
from master.auth import accounts
from master.auth.token_cache import CHANNEL
from master.db import make_engine
from master.models import ApiToken, User
from shared.roles import Role
from shared.settings import Settings
from tests.conftest import empty_database, farm_settings, wait_for
from trainfarm.credentials import ensure_credentials
from trainfarm.services import RedisServer, SeaweedS3
from trainfarm.services.farm import MasterProcess

COMMAND = {"command": ["python", "-c", "print(1)"], "queue": "cpu"}
#: The routes anyone may call; every other one needs a token or a session.
OPEN_ROUTES = {("get", "/api/health"), ("post", "/api/auth/login"), ("post", "/api/auth/session")}
USERS = {"alice": Role.MEMBER, "bob": Role.MEMBER, "vic": Role.VIEWER}


@dataclass
class Farm:
    backend: str
    settings: Settings
    engine: Engine
    #: The app with the default visibility (team); no credentials of its own.
    client: TestClient
    #: A second app on the same database with TRAINFARM_JOB_VISIBILITY=own.
    own: TestClient
    passwords: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def submit(self, user: str, client: TestClient | None = None) -> int:
        response = (client or self.client).post("/api/jobs", json=COMMAND, headers=self.auth(user))
        assert response.status_code == 201, response.text
        assert response.json()["owner"] == user
        return int(response.json()["id"])

    def login(self, user: str, password: str | None = None) -> httpx.Response:
        form = {"username": user, "password": password or self.passwords[user]}
        return self.client.post("/api/auth/login", data=form)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def farm(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    s3_server: SeaweedS3,
) -> Iterator[Farm]:
    tmp = tmp_path_factory.mktemp(f"auth-{request.param}")
    redis.Redis.from_url(redis_server.url).flushdb()
    settings = farm_settings(
        tmp / "farm",
        redis_server,
        s3_server,
        empty_database(request, tmp, request.param),
        # The shared apps see many failed logins on purpose; the limit has a test of its own.
        rate_limit_failed_logins_per_minute=100_000,
    )
    creds = ensure_credentials(settings)
    engine = make_engine(settings.database_url)
    own_settings = settings.model_copy(update={"job_visibility": "own"})
    base = "http://testserver"
    with (
        TestClient(create_app(settings), base_url=base) as client,
        TestClient(create_app(own_settings), base_url=base) as own,
    ):
        farm = Farm(request.param, settings, engine, client, own)
        farm.passwords["admin"], farm.tokens["admin"] = creds.password, creds.token
        for name, role in USERS.items():
            farm.passwords[name] = f"{name}-password-{uuid.uuid4().hex[:6]}"
            body = {"name": name, "role": role.value, "password": farm.passwords[name]}
            assert client.post("/api/users", json=body, headers=farm.auth("admin")).status_code == 201
            answer = farm.login(name)
            assert answer.status_code == 200, answer.text
            farm.tokens[name] = answer.json()["access_token"]
        yield farm
    engine.dispose()


sqlite_only = pytest.mark.parametrize("farm", ["sqlite"], indirect=True)


# 1. Every route needs credentials -------------------------------------------------------------


def _fill(path: str, operation: dict) -> str:
    """The path with valid-looking values in its parameters, so only the credentials are missing."""
    for param in operation.get("parameters", []):
        if param["in"] != "path":
            continue
        schema = param.get("schema", {})
        if schema.get("type") == "integer":
            value = "1"
        elif param["name"] == "digest":
            value = "ab" * 32
        else:
            value = "digits.csv" if "/datasets" in path or "/artifacts" in path else "alice"
        path = path.replace("{" + param["name"] + "}", value)
    assert "{" not in path, path
    return path


@sqlite_only
def test_every_route_but_health_and_login_needs_credentials(farm: Farm):
    schema = farm.client.get("/openapi.json").json()
    operations = [
        (method, path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert {(m, p) for m, p, _ in operations} >= OPEN_ROUTES
    checked = 0
    for method, path, op in operations:
        if (method, path) in OPEN_ROUTES:
            continue
        url = _fill(path, op)
        for headers in ({}, {"Authorization": "Basic x"}, {"Authorization": "Bearer nonsense"}):
            body: dict[str, Any] = {"json": {}} if "requestBody" in op and method != "put" else {}
            response = farm.client.request(method.upper(), url, headers=headers, **body)
            assert response.status_code == 401, (method, url, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]
        checked += 1
    assert checked >= 20, checked  # the walk saw the API, not an empty schema
    for headers in ({}, {"Authorization": "Basic x"}, {"Authorization": "Bearer nonsense"}):
        assert farm.client.get("/metrics", headers=headers).status_code == 401
    # Members are not scrapers either; the admin and the scrape token are.
    assert farm.client.get("/metrics", headers=farm.auth("alice")).status_code == 401
    assert farm.client.get("/metrics", headers=farm.auth("admin")).status_code == 200
    assert farm.client.get("/api/health").status_code == 200


# 2. Roles ----------------------------------------------------------------------------------------


@sqlite_only
def test_a_viewer_reads_everything_and_changes_nothing(farm: Farm):
    job = farm.submit("alice")
    vic = farm.auth("vic")
    for url in ("/api/jobs", f"/api/jobs/{job}", "/api/nodes", "/api/datasets", f"/api/jobs/{job}/logs"):
        assert farm.client.get(url, headers=vic).status_code == 200, url
    refused = [
        farm.client.post("/api/jobs", json=COMMAND, headers=vic),
        farm.client.post("/api/jobs/batch", json={"jobs": [COMMAND]}, headers=vic),
        farm.client.post(f"/api/jobs/{job}/cancel", headers=vic),
        farm.client.post("/api/datasets", params={"name": "vic.csv"}, content=b"a,b\n1,2\n", headers=vic),
        farm.client.put(f"/api/code/{'ab' * 32}", content=b"x", headers=vic),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "viewer" in response.json()["message"]
    assert farm.client.get(f"/api/jobs/{job}", headers=vic).json()["status"] == "queued"
    assert farm.client.get("/api/datasets/vic.csv", headers=vic).status_code == 404


def test_members_change_their_own_things_and_admins_anything(farm: Farm):
    alices, bobs, bobs_too = farm.submit("alice"), farm.submit("bob"), farm.submit("bob")
    alice, bob, admin = farm.auth("alice"), farm.auth("bob"), farm.auth("admin")

    refused = farm.client.post(f"/api/jobs/{bobs}/cancel", headers=alice)
    assert refused.status_code == 403
    assert "belongs to bob" in refused.json()["message"]
    assert farm.client.get(f"/api/jobs/{bobs}", headers=bob).json()["cancel_requested"] is False

    own = farm.client.post(f"/api/jobs/{alices}/cancel", headers=alice)
    assert own.status_code == 200, own.text
    assert own.json()["status"] == "cancelled" or own.json()["cancel_requested"]
    assert farm.client.post(f"/api/jobs/{bobs_too}/cancel", headers=admin).status_code == 200

    for url in ("/api/users", "/api/audit", "/api/users/bob", "/api/tokens/all"):
        assert farm.client.get(url, headers=alice).status_code == 403, url
    made = farm.client.post("/api/users", json={"name": "mallory", "password": "x" * 12}, headers=alice)
    assert made.status_code == 403
    promoted = farm.client.patch("/api/users/alice", json={"role": "admin"}, headers=alice)
    assert promoted.status_code == 403
    assert farm.client.get("/api/users/alice", headers=admin).json()["role"] == "member"

    name = f"bobs-{uuid.uuid4().hex[:6]}.csv"
    first = farm.client.post("/api/datasets", params={"name": name}, content=b"a\n1\n", headers=bob)
    assert first.status_code == 201 and first.json()["owner"] == "bob"
    overwrite = {"name": name, "overwrite": "true"}
    taken = farm.client.post("/api/datasets", params=overwrite, content=b"a\n2\n", headers=alice)
    assert taken.status_code == 403 and "belongs to bob" in taken.json()["message"]
    assert farm.client.get(f"/api/datasets/{name}", headers=bob).json()["size"] == len(b"a\n1\n")
    mine = farm.client.post("/api/datasets", params=overwrite, content=b"a\n22\n", headers=bob)
    assert mine.status_code == 201
    by_admin = farm.client.post("/api/datasets", params=overwrite, content=b"a\n333\n", headers=admin)
    assert by_admin.status_code == 201 and by_admin.json()["size"] == len(b"a\n333\n")


# 3. Visibility -----------------------------------------------------------------------------------


def _detail_urls(job: int) -> list[str]:
    return [f"/api/jobs/{job}/logs", f"/api/jobs/{job}/metrics", f"/api/jobs/{job}/artifacts"]


def test_team_visibility_shows_everyone_everything(farm: Farm):
    bobs = farm.submit("bob")
    alice = farm.auth("alice")
    job = farm.client.get(f"/api/jobs/{bobs}", headers=alice).json()
    assert job["details_hidden"] is False and job["spec"]["command"] == COMMAND["command"]
    for url in _detail_urls(bobs):
        assert farm.client.get(url, headers=alice).status_code == 200, url
    listed = farm.client.get("/api/jobs", headers=alice).json()["items"]
    assert all(not j["details_hidden"] for j in listed)


def test_own_visibility_hides_other_peoples_details(farm: Farm):
    alices, bobs = farm.submit("alice", farm.own), farm.submit("bob", farm.own)
    alice, admin = farm.auth("alice"), farm.auth("admin")
    own = farm.own

    listed = {j["id"]: j for j in own.get("/api/jobs", headers=alice).json()["items"]}
    assert listed[alices]["details_hidden"] is False and listed[alices]["spec"]
    hidden = listed[bobs]
    assert hidden["details_hidden"] is True and hidden["spec"] == {}
    assert (hidden["owner"], hidden["status"], hidden["queue"]) == ("bob", "queued", "cpu")
    assert hidden["created_at"]

    one = own.get(f"/api/jobs/{bobs}", headers=alice).json()
    assert one["details_hidden"] is True and one["spec"] == {} and one["owner"] == "bob"
    assert one["attempt_list"] and all(a["log_key"] is None for a in one["attempt_list"])
    for url in [*_detail_urls(bobs), f"/api/jobs/{bobs}/logs/stream"]:
        response = own.get(url, headers=alice)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["message"] == f"job {bobs} not found"
    # The viewer, too, sees only what is theirs (nothing).
    assert own.get(f"/api/jobs/{bobs}/logs", headers=farm.auth("vic")).status_code == 404

    for url in _detail_urls(alices):
        assert own.get(url, headers=alice).status_code == 200, url
    assert own.get(f"/api/jobs/{alices}", headers=alice).json()["spec"]["command"] == COMMAND["command"]
    # Admins see everyone's jobs whole.
    assert own.get(f"/api/jobs/{bobs}", headers=admin).json()["details_hidden"] is False
    for url in _detail_urls(bobs):
        assert own.get(url, headers=admin).status_code == 200, url


def test_owner_filters(farm: Farm):
    alices, bobs = farm.submit("alice"), farm.submit("bob")
    alice = farm.auth("alice")

    def owners(**params: str) -> tuple[set[str], set[int]]:
        items = farm.client.get("/api/jobs", params={**params, "limit": 500}, headers=alice).json()["items"]
        return {j["owner"] for j in items}, {j["id"] for j in items}

    mine, mine_ids = owners(owner="me")
    assert mine == {"alice"} and alices in mine_ids and bobs not in mine_ids
    bobs_owners, bobs_ids = owners(owner="bob")
    assert bobs_owners == {"bob"} and bobs in bobs_ids
    everyone, _ = owners()
    assert {"alice", "bob"} <= everyone
    assert owners(owner="nobody-here") == (set(), set())
    bad = farm.client.get("/api/jobs", params={"owner": "bad name!"}, headers=alice)
    assert bad.status_code == 422 and bad.json()["field"] == "owner"


# 4. Tokens ---------------------------------------------------------------------------------------


def test_tokens_are_shown_once_listed_by_prefix_and_revoked_at_once(farm: Farm):
    bob = farm.auth("bob")
    made = farm.client.post("/api/tokens", json={"name": "laptop", "expires_in_days": 30}, headers=bob)
    assert made.status_code == 201, made.text
    token = made.json()
    assert token["token"].startswith("tf_") and token["prefix"] == token["token"][:9]
    assert (token["user"], token["kind"], token["name"]) == ("bob", "api", "laptop")
    assert token["expires_at"] is not None
    new = {"Authorization": f"Bearer {token['token']}"}
    assert farm.client.get("/api/auth/me", headers=new).json()["name"] == "bob"

    listed = farm.client.get("/api/tokens", headers=bob)
    assert token["token"] not in listed.text
    row = next(t for t in listed.json() if t["id"] == token["id"])
    assert row["prefix"] == token["prefix"] and "token" not in row and row["last_used_at"] is not None

    # Someone else's token is none of a member's business: 404, and it keeps working.
    assert farm.client.delete(f"/api/tokens/{token['id']}", headers=farm.auth("alice")).status_code == 404
    assert (
        farm.client.get("/api/tokens", params={"user": "bob"}, headers=farm.auth("alice")).status_code == 403
    )
    assert farm.client.get("/api/auth/me", headers=new).status_code == 200

    revoked = farm.client.delete(f"/api/tokens/{token['id']}", headers=bob)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = farm.client.get("/api/auth/me", headers=new)
    assert refused.status_code == 401 and "revoked" in refused.json()["message"]
    # The other app (another master on the same database) refuses it as well.
    assert farm.own.get("/api/jobs", headers=new).status_code == 401
    assert all(t["id"] != token["id"] for t in farm.client.get("/api/tokens", headers=bob).json())
    with_revoked = farm.client.get("/api/tokens", params={"revoked": "true"}, headers=bob).json()
    assert any(t["id"] == token["id"] for t in with_revoked)
    # Admins revoke anyone's.
    other = farm.client.post("/api/tokens", json={"name": "ci"}, headers=bob).json()
    assert farm.client.delete(f"/api/tokens/{other['id']}", headers=farm.auth("admin")).status_code == 200
    assert (
        farm.client.get("/api/auth/me", headers={"Authorization": f"Bearer {other['token']}"}).status_code
        == 401
    )


def _issue(farm: Farm, user: str, *, kind: str = "api", lifetime: timedelta | None = None) -> str:
    with Session(farm.engine) as session:
        row = accounts.get_user(session, user)
        issued = accounts.issue_token(session, row, "made here", kind=kind, lifetime=lifetime, actor=None)
        session.commit()
        return issued.plain


def test_expired_and_session_tokens_are_refused_as_bearer(farm: Farm):
    expired = _issue(farm, "alice", lifetime=timedelta(seconds=-1))
    response = farm.client.get("/api/auth/me", headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and "expired" in response.json()["message"]

    # One that expires in an hour works, until its expiry is moved into the past.
    soon = _issue(farm, "alice", lifetime=timedelta(hours=1))
    header = {"Authorization": f"Bearer {soon}"}
    assert farm.client.get("/api/auth/me", headers=header).status_code == 200
    with Session(farm.engine) as session:
        past = accounts.utcnow() - timedelta(minutes=1)
        session.execute(
            update(ApiToken)
            .where(col(ApiToken.digest) == hashlib.sha256(soon.encode()).hexdigest())
            .values(expires_at=past)
        )
        session.commit()
    # An edit straight in the database, not through the API: it announces the change itself, as
    # the API does after each change that takes access away (else masters trust their cached
    # copy for up to master.auth.token_cache.MAX_AGE). The master hears it within milliseconds.
    redis.Redis.from_url(farm.settings.redis_url).publish(CHANNEL, "changed")
    response = wait_for(
        lambda: (r := farm.client.get("/api/auth/me", headers=header)).status_code == 401 and r,
        timeout=5,
        interval=0.02,
        what="the cached token dropped",
    )
    assert "expired" in response.json()["message"]  # type: ignore[union-attr]

    session_token = _issue(farm, "alice", kind="session", lifetime=timedelta(hours=1))
    response = farm.client.get("/api/auth/me", headers={"Authorization": f"Bearer {session_token}"})
    assert response.status_code == 401


def test_a_disabled_users_tokens_stop_at_once_and_work_again_when_enabled(farm: Farm):
    admin = farm.auth("admin")
    second = farm.client.post("/api/tokens", json={"name": "second"}, headers=farm.auth("bob")).json()[
        "token"
    ]
    bobs = [farm.auth("bob"), {"Authorization": f"Bearer {second}"}]
    try:
        assert farm.client.patch("/api/users/bob", json={"disabled": True}, headers=admin).status_code == 200
        for header in bobs:
            for client in (farm.client, farm.own):
                response = client.get("/api/jobs", headers=header)
                assert response.status_code == 401 and "disabled" in response.json()["message"]
        assert farm.login("bob").status_code == 401
    finally:
        assert farm.client.patch("/api/users/bob", json={"disabled": False}, headers=admin).status_code == 200
    for header in bobs:
        assert farm.client.get("/api/jobs", headers=header).status_code == 200


def test_login_over_rest_issues_a_listed_revocable_token(farm: Farm):
    response = farm.login("alice")
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"access_token", "token_type", "expires_at"}
    assert answer["token_type"] == "bearer" and answer["expires_at"] is not None
    header = {"Authorization": f"Bearer {answer['access_token']}"}
    listed = farm.client.get("/api/tokens", headers=header).json()
    row = next(t for t in listed if t["prefix"] == answer["access_token"][:9])
    assert row["kind"] == "login" and answer["access_token"] not in str(listed)
    assert farm.client.delete(f"/api/tokens/{row['id']}", headers=header).status_code == 200
    assert farm.client.get("/api/auth/me", headers=header).status_code == 401


def test_the_last_active_admin_is_kept(farm: Farm):
    admin = farm.auth("admin")
    for change in ({"disabled": True}, {"role": "member"}, {"role": "viewer"}):
        response = farm.client.patch("/api/users/admin", json=change, headers=admin)
        assert response.status_code == 409, response.text
        assert "last active admin" in response.json()["message"]
    me = farm.client.get("/api/auth/me", headers=admin).json()
    assert me["role"] == "admin"


# 5. Audit ----------------------------------------------------------------------------------------


def _audit(farm: Farm, **params: object) -> list[dict]:
    response = farm.client.get("/api/audit", params={"limit": 500, **params}, headers=farm.auth("admin"))
    assert response.status_code == 200, response.text
    return response.json()["items"]


@sqlite_only
def test_changes_and_failed_logins_are_audited(farm: Farm):
    alice, admin = farm.auth("alice"), farm.auth("admin")
    newest = _audit(farm, limit=1)[0]["id"]
    job = farm.submit("alice")
    batch = farm.client.post("/api/jobs/batch", json={"jobs": [COMMAND] * 3}, headers=alice)
    assert batch.status_code == 201
    first, last = batch.json()[0]["id"], batch.json()[-1]["id"]
    assert farm.client.post(f"/api/jobs/{job}/cancel", headers=alice).status_code == 200
    dataset = f"audited-{uuid.uuid4().hex[:6]}.csv"
    assert (
        farm.client.post(
            "/api/datasets", params={"name": dataset}, content=b"a\n1\n", headers=alice
        ).status_code
        == 201
    )
    bundle = uuid.uuid4().bytes * 4
    digest = hashlib.sha256(bundle).hexdigest()
    assert farm.client.put(f"/api/code/{digest}", content=bundle, headers=alice).status_code == 201
    user = f"u{uuid.uuid4().hex[:8]}"
    assert (
        farm.client.post("/api/users", json={"name": user, "password": "p" * 12}, headers=admin).status_code
        == 201
    )
    assert farm.client.patch(f"/api/users/{user}", json={"role": "viewer"}, headers=admin).status_code == 200
    token = farm.client.post("/api/tokens", json={"name": "audited"}, headers=alice).json()
    assert farm.client.delete(f"/api/tokens/{token['id']}", headers=alice).status_code == 200
    assert farm.login("alice", "not-her-password").status_code == 401
    assert farm.login("nobody-at-all", "whatever-password").status_code == 401

    entries = [e for e in _audit(farm) if e["id"] > newest]
    seen = {(e["actor"], e["action"], e["target"]) for e in entries}
    expected = {
        ("alice", "job.submit", f"job {job}"),
        ("alice", "job.submit", f"jobs {first}..{last} (3)"),
        ("alice", "job.cancel", f"job {job}"),
        ("alice", "dataset.upload", f"dataset {dataset}"),
        ("alice", "code.upload", f"code {digest[:12]}"),
        ("admin", "user.create", f"user {user}"),
        ("admin", "user.set_role", f"user {user}"),
        ("alice", "token.create", "user alice"),
        ("alice", "token.revoke", "user alice"),
        (None, "auth.login_failed", "user alice"),
        (None, "auth.login_failed", "user nobody-at-all"),
    }
    assert expected <= seen, expected - seen
    batch_entries = [e for e in entries if e["action"] == "job.submit" and e["target"].startswith("jobs ")]
    assert len(batch_entries) == 1 and batch_entries[0]["detail"] == {"jobs": [first, first + 1, last]}
    assert all(e["address"] for e in entries)
    role_change = next(e for e in entries if e["action"] == "user.set_role")
    assert role_change["detail"] == {"from": "member", "to": "viewer"}

    # Filters and pages: newest first, each page older than the last, none twice.
    assert {e["actor"] for e in _audit(farm, actor="alice")} == {"alice"}
    assert {e["action"] for e in _audit(farm, action="token")} <= {"token.create", "token.revoke"}
    pages: list[dict] = []
    before: int | None = None
    while len(pages) < 9:
        params: dict[str, Any] = {"limit": 3, **({"before": before} if before else {})}
        page = farm.client.get("/api/audit", params=params, headers=admin).json()
        pages += page["items"]
        assert len(page["items"]) == 3 and page["next_before"] == page["items"][-1]["id"]
        before = page["next_before"]
    ids = [e["id"] for e in pages]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 9
    assert ids == [e["id"] for e in _audit(farm, limit=9)]
    for user_name in ("alice", "vic"):
        assert farm.client.get("/api/audit", headers=farm.auth(user_name)).status_code == 403


# 6. Dashboard session ----------------------------------------------------------------------------


@sqlite_only
def test_the_dashboard_session_cookie(farm: Farm):
    form = {"username": "alice", "password": farm.passwords["alice"]}
    # Login CSRF: no other site may sign a visitor's browser in (as anyone).
    for route in ("/api/auth/session", "/api/auth/login"):
        foreign = farm.client.post(route, data=form, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    opened = farm.client.post("/api/auth/session", data=form, headers={"Origin": "http://testserver"})
    assert opened.status_code == 200, opened.text
    assert opened.json()["name"] == "alice" and opened.json()["role"] == "member"
    set_cookie = opened.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert re.search(r"samesite=strict", set_cookie, re.IGNORECASE)
    assert f"Max-Age={farm.settings.session_ttl}" in set_cookie
    value = opened.cookies["tf_session"]
    farm.client.cookies.clear()  # each request below says which cookie it sends
    cookie = {"Cookie": f"tf_session={value}"}

    assert farm.client.get("/api/auth/me", headers=cookie).json()["name"] == "alice"
    assert farm.client.get("/api/jobs", headers=cookie).status_code == 200
    for origin in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        response = farm.client.post("/api/jobs", json=COMMAND, headers={**cookie, **origin})
        assert response.status_code == 403, (origin, response.text)
        assert "Origin" in response.json()["message"]
    ours = farm.client.post("/api/jobs", json=COMMAND, headers={**cookie, "Origin": "http://testserver"})
    assert ours.status_code == 201 and ours.json()["owner"] == "alice"

    tampered = value[:-3] + ("xyz" if not value.endswith("xyz") else "abc")
    response = farm.client.get("/api/auth/me", headers={"Cookie": f"tf_session={tampered}"})
    assert response.status_code == 401 and "cookie" in response.json()["message"]
    # The cookie's token is no bearer token.
    inner = value.split(".")[0]
    assert farm.client.get("/api/auth/me", headers={"Authorization": f"Bearer {inner}"}).status_code == 401

    closed = farm.client.delete("/api/auth/session", headers={**cookie, "Origin": "http://testserver"})
    assert closed.status_code == 204
    assert 'tf_session=""' in closed.headers["set-cookie"] or "Max-Age=0" in closed.headers["set-cookie"]
    response = farm.client.get("/api/auth/me", headers=cookie)
    assert response.status_code == 401 and "revoked" in response.json()["message"]
    farm.client.cookies.clear()


# 7. Bad input and secrets ------------------------------------------------------------------------


@sqlite_only
def test_wrong_password_and_unknown_user_answer_alike(farm: Farm):
    wrong = farm.login("alice", "not-her-password")
    unknown = farm.login("nobody-at-all", "not-her-password")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["field"] == "password"
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    missing = farm.client.post("/api/auth/login", data={"username": "alice"})
    assert missing.status_code == 422 and missing.json()["field"] == "password"


def test_no_password_or_token_is_stored_or_exposed(farm: Farm):
    used = [farm.tokens[name] for name in ("admin", "alice", "bob", "vic")]
    for token in used:
        assert farm.client.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    secrets = [*farm.passwords.values(), *used]
    with Session(farm.engine) as session:
        hashes = session.execute(select(col(User.name), col(User.password_hash))).all()
        assert {name for name, _ in hashes} >= set(farm.passwords)
        assert all(h.startswith("$argon2") for _, h in hashes)
        for table in SQLModel.metadata.sorted_tables:
            dump = str(session.execute(table.select()).all())
            leaked = [s[:6] for s in secrets if s in dump]
            assert not leaked, (table.name, leaked)
    metrics = farm.client.get("/metrics", headers=farm.auth("admin"))
    assert metrics.status_code == 200 and "http" in metrics.text
    assert not [s[:6] for s in secrets if s in metrics.text]


# 9. Hosts and headers ----------------------------------------------------------------------------


@sqlite_only
def test_unknown_hosts_are_refused_and_pages_carry_a_csp(farm: Farm):
    evil = farm.client.get("/api/jobs", headers={**farm.auth("alice"), "Host": "evil.example"})
    assert evil.status_code == 400
    assert farm.client.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
    for url, headers in (("/", {}), ("/api/jobs", farm.auth("alice"))):
        response = farm.client.get(url, headers=headers)
        assert response.status_code == 200
        assert "default-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"


# 10. Production settings -------------------------------------------------------------------------

SAFE_PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "s3_secret_key": "a-real-secret-" + "x" * 20,
    "session_secret": "s" * 40,
    "allowed_hosts": ["farm.example.org"],
}


def test_production_settings_are_safe():
    Settings(**SAFE_PRODUCTION).check_master()  # the baseline is accepted
    # A worker needs no session secret: only the master checks for one.
    Settings(**{**SAFE_PRODUCTION, "session_secret": None})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"auth_enabled": False}, "TRAINFARM_AUTH_ENABLED"),
        ({"session_secret": None}, "TRAINFARM_SESSION_SECRET"),
        ({"session_secret": SecretStr("short")}, "TRAINFARM_SESSION_SECRET"),
        ({"allowed_hosts": ["*"]}, "TRAINFARM_ALLOWED_HOSTS"),
        ({"allowed_hosts": ["farm.example.org", "*"]}, "TRAINFARM_ALLOWED_HOSTS"),
    ],
)
def test_production_refuses_unsafe_settings(change, named):
    with pytest.raises(ValueError, match=named):
        create_app(Settings(**{**SAFE_PRODUCTION, **change}))


# 8. Rate limits, across two master processes -----------------------------------------------------


@pytest.fixture
def limited_masters(
    tmp_path: Path, redis_server: RedisServer, s3_server: SeaweedS3
) -> Iterator[tuple[MasterProcess, MasterProcess]]:
    settings = farm_settings(
        tmp_path / "farm",
        redis_server,
        s3_server,
        f"sqlite:///{tmp_path / 'master.db'}",
        rate_limit_mutations_per_minute=3,
        rate_limit_failed_logins_per_minute=2,
        rate_limit_window=3,
    )
    with (
        MasterProcess(tmp_path / "m1", settings) as first,
        MasterProcess(tmp_path / "m2", settings) as second,
    ):
        yield first, second


def _fresh_token(master: MasterProcess) -> str:
    """A new admin token (a key of its own in the limiter), made without a counted request."""
    engine = make_engine(master.settings.database_url)
    try:
        with Session(engine) as session:
            admin = accounts.get_user(session, master.credentials.user)
            plain = accounts.issue_token(session, admin, "limits", actor=None).plain
            session.commit()
            return plain
    finally:
        engine.dispose()


def test_rate_limits_are_shared_by_the_farms_masters(limited_masters: tuple[MasterProcess, MasterProcess]):
    first, second = limited_masters
    token = _fresh_token(first)
    with first.client(token, timeout=30) as one, second.client(token, timeout=30) as two:
        # Three changes on one master, the fourth on the other: the counters are the farm's.
        for client in (one, one, one):
            assert client.post("/jobs", json=COMMAND).status_code == 201
        refused = two.post("/jobs", json=COMMAND)
        assert refused.status_code == 429, refused.text
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 2 * 3  # a sliding window may ask for up to two windows
        assert "TRAINFARM_RATE_LIMIT_MUTATIONS_PER_MINUTE" in refused.json()["message"]
        # Reading is never limited.
        for _ in range(6):
            assert two.get("/jobs").status_code == 200
        # Once the window has passed, changes go through again.
        wait_for(
            lambda: one.post("/jobs", json=COMMAND).status_code == 201,
            timeout=retry_after + 8,
            interval=retry_after,
            what="the mutation limit to let a change through",
        )

    # A batch of many jobs is one request: two batches and a job fit under a limit of three.
    with second.client(_fresh_token(first), timeout=30) as client:
        for body in ({"jobs": [COMMAND] * 5}, {"jobs": [COMMAND] * 5}):
            assert client.post("/jobs/batch", json=body).status_code == 201
        assert client.post("/jobs", json=COMMAND).status_code == 201
        assert client.post("/jobs", json=COMMAND).status_code == 429

    # Failed logins count per address, on every master: the third try is refused, right or not.
    user, password = first.credentials.user, first.credentials.password
    bad = {"username": user, "password": "not-the-password"}
    good = {"username": user, "password": password}
    assert httpx.post(f"{first.url}/api/auth/login", data=bad).status_code == 401
    assert httpx.post(f"{second.url}/api/auth/login", data=bad).status_code == 401
    refused = httpx.post(f"{first.url}/api/auth/login", data=good)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert httpx.post(f"{second.url}/api/auth/login", data=good).status_code == 429
    wait_for(
        lambda: httpx.post(f"{second.url}/api/auth/login", data=good).status_code == 200,
        timeout=12,
        interval=1,
        what="the failed-login limit to let a login through",
    )

    # None of the tokens used reached either master's log.
    for master in (first, second):
        log = master.log_path.read_text(errors="replace")
        assert token not in log and master.token not in log and password not in log
