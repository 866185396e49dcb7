"""The access-control building blocks on their own: tokens, passwords, permissions, the last-admin
rule and the dashboard's session cookie. No service runs here; the database is a SQLite file."""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from collections.abc import Callable

import pytest
from itsdangerous import TimestampSigner
from sqlalchemy import Engine
from sqlmodel import Session

from master.auth import accounts, passwords, tokens
from master.auth.callers import Caller
from master.auth.permissions import may_change, sees_details
from master.auth.sessions import SessionCookies
from shared.errors import Conflict, Unauthorized
from shared.roles import Role

URLSAFE_43 = re.compile(r"^tf_[A-Za-z0-9_-]{43}$")


def test_made_tokens_are_tf_plus_43_random_chars_stored_only_as_sha256():
    made = [tokens.make_token() for _ in range(20)]
    assert len({t.plain for t in made}) == 20
    for token in made:
        assert URLSAFE_43.match(token.plain), token.plain
        assert token.prefix == token.plain[: tokens.SHOWN] and token.prefix.startswith("tf_")
        assert token.digest == hashlib.sha256(token.plain.encode()).hexdigest() == tokens.digest(token.plain)
        assert token.plain not in token.digest


@pytest.mark.parametrize(
    ("value", "looks"),
    [
        ("tf_" + "a" * 43, True),
        ("tf_" + "a" * 13, True),  # 16 characters, the shortest accepted
        ("tf_" + "a" * 12, False),
        ("tf_" + "a" * 126, False),  # 129 characters
        ("nonsense", False),
        ("TF_" + "a" * 43, False),
        ("", False),
    ],
)
def test_looks_like_token(value, looks):
    assert tokens.looks_like_token(value) is looks


def test_passwords_are_argon2_and_the_decoy_never_verifies():
    stored = passwords.hash_password("correct horse")
    assert stored.startswith("$argon2")
    assert "correct horse" not in stored
    assert passwords.verify_password("correct horse", stored)
    assert not passwords.verify_password("wrong horse!", stored)
    # No stored hash (unknown user): False, even for the decoy's own password.
    assert not passwords.verify_password("trainfarm-decoy-password", None)
    assert not passwords.verify_password("correct horse", None)


def test_password_rules():
    assert passwords.password_problem("short") is not None
    assert passwords.password_problem("x" * 1025) is not None
    assert passwords.password_problem("long enough") is None


ADMIN = Caller("root", Role.ADMIN, 1)
MEMBER = Caller("alice", Role.MEMBER, 2)
VIEWER = Caller("vic", Role.VIEWER, 3)


@pytest.mark.parametrize(
    ("caller", "owner", "changes"),
    [
        (ADMIN, "alice", True),
        (ADMIN, None, True),
        (ADMIN, "root", True),
        (MEMBER, "alice", True),
        (MEMBER, "bob", False),
        (MEMBER, None, False),
        (VIEWER, "vic", False),  # a viewer changes nothing, not even what bears their name
        (VIEWER, "alice", False),
    ],
)
def test_may_change(caller, owner, changes):
    assert may_change(caller, owner) is changes


@pytest.mark.parametrize(
    ("caller", "owner", "visibility", "sees"),
    [
        (MEMBER, "bob", "team", True),
        (VIEWER, "bob", "team", True),
        (MEMBER, None, "team", True),
        (MEMBER, "bob", "own", False),
        (MEMBER, None, "own", False),
        (MEMBER, "alice", "own", True),
        (VIEWER, "bob", "own", False),
        (VIEWER, "vic", "own", True),
        (ADMIN, "bob", "own", True),
        (ADMIN, None, "own", True),
    ],
)
def test_sees_details(caller, owner, visibility, sees):
    assert sees_details(caller, owner, visibility) is sees


def test_the_last_active_admin_cannot_be_disabled_or_demoted(engine: Engine):
    with Session(engine) as session:
        root = accounts.create_user(session, "root", Role.ADMIN, "root-password", actor=None)
        session.flush()
        with pytest.raises(Conflict, match="last active admin"):
            accounts.set_disabled(session, root, True, actor="root")
        with pytest.raises(Conflict, match="last active admin"):
            accounts.set_role(session, root, Role.MEMBER, actor="root")
        assert root.role is Role.ADMIN and not root.disabled

        # A second admin lets the first go; then the second is the last one.
        other = accounts.create_user(session, "other", Role.ADMIN, "other-password", actor="root")
        session.flush()
        accounts.set_role(session, root, Role.MEMBER, actor="other")
        session.flush()
        with pytest.raises(Conflict):
            accounts.set_disabled(session, other, True, actor="other")

        # A disabled admin is no active admin: it does not count towards keeping one.
        accounts.set_role(session, root, Role.ADMIN, actor="other")
        accounts.set_disabled(session, root, True, actor="other")
        session.flush()
        with pytest.raises(Conflict):
            accounts.set_role(session, other, Role.VIEWER, actor="other")
        # Disabling someone who is no admin needs no other admin.
        member = accounts.create_user(session, "alice", Role.MEMBER, "alice-password", actor="other")
        session.flush()
        accounts.set_disabled(session, member, True, actor="other")


def _median_seconds(action: Callable[[], object], tries: int = 5) -> float:
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_an_unknown_user_costs_the_same_argon2_work_as_a_wrong_password(engine: Engine):
    with Session(engine) as session:
        accounts.create_user(session, "alice", Role.MEMBER, "alice-password", actor=None)
        session.commit()
        assert accounts.authenticate(session, "alice", "alice-password") is not None
        assert accounts.authenticate(session, "alice", "wrong-password") is None
        assert accounts.authenticate(session, "nobody", "alice-password") is None
        wrong_password = _median_seconds(lambda: accounts.authenticate(session, "alice", "wrong-password"))
        unknown_user = _median_seconds(lambda: accounts.authenticate(session, "nobody", "wrong-password"))
    # argon2 takes tens of ms, a skipped hash well under one: a generous bound, no speed claim.
    assert unknown_user >= wrong_password / 2, (unknown_user, wrong_password)


def test_a_disabled_user_does_not_authenticate(engine: Engine):
    with Session(engine) as session:
        admin = accounts.create_user(session, "root", Role.ADMIN, "root-password", actor=None)
        alice = accounts.create_user(session, "alice", Role.MEMBER, "alice-password", actor=None)
        session.flush()
        accounts.set_disabled(session, alice, True, actor=admin.name)
        session.commit()
        assert accounts.authenticate(session, "alice", "alice-password") is None


SECRET = "s" * 48


def test_session_cookie_opens_to_the_sealed_token():
    cookies = SessionCookies(SECRET, ttl=60)
    token = tokens.make_token().plain
    sealed = cookies.seal(token)
    assert sealed != token
    assert cookies.open(sealed) == token


def test_an_old_session_cookie_is_refused(monkeypatch: pytest.MonkeyPatch):
    cookies = SessionCookies(SECRET, ttl=60)
    sealed = cookies.seal(tokens.make_token().plain)
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) + 61)
    with pytest.raises(Unauthorized, match="expired"):
        cookies.open(sealed)


def test_a_tampered_or_foreign_session_cookie_is_refused():
    cookies = SessionCookies(SECRET, ttl=60)
    token = tokens.make_token().plain
    sealed = cookies.seal(token)
    _payload, _, rest = sealed.partition(".")
    other = SessionCookies(SECRET, ttl=60).seal(tokens.make_token().plain).partition(".")[0]
    for bad in (
        other + "." + rest,  # another token under this one's signature
        sealed[:-2] + ("AA" if not sealed.endswith("AA") else "BB"),
        SessionCookies("t" * 48, ttl=60).seal(token),  # signed with another master's key
        token,  # a bare token is no cookie
        "",
    ):
        with pytest.raises(Unauthorized, match="not valid"):
            cookies.open(bad)


# Secrets that must not travel ------------------------------------------------------------------------


def test_child_processes_never_inherit_the_masters_keys_or_the_users_token(monkeypatch: pytest.MonkeyPatch):
    from shared.settings import NOT_INHERITED, child_environment

    for name in NOT_INHERITED:
        monkeypatch.setenv(name, "secret-" + name)
    monkeypatch.setenv("TRAINFARM_NODE_NAME", "kept")
    env = child_environment({"TRAINFARM_METRICS_TOKEN": "given on purpose"})
    assert env["TRAINFARM_NODE_NAME"] == "kept"
    assert env["TRAINFARM_METRICS_TOKEN"] == "given on purpose"  # a child that needs one is handed it
    assert not any(value.startswith("secret-") for value in env.values())


def test_a_standalone_farms_admin_token_is_offered_only_to_this_machine(tmp_path, monkeypatch):
    import json

    from shared.settings import Settings
    from trainfarm.token_store import find_token

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    data = tmp_path / "farm"
    data.mkdir()
    creds = {"user": "admin", "password": "p" * 12, "token": "tf_" + "a" * 43, "metrics_token": "m"}
    (data / "credentials.json").write_text(json.dumps(creds))
    settings = Settings(data_dir=data)
    for url in ("http://127.0.0.1:8000", "http://localhost:8123"):
        assert find_token(url, settings)[0] == creds["token"], url
    for url in ("https://farm.example.org", "http://10.1.2.3:8000"):
        assert find_token(url, settings) == (None, ""), url
