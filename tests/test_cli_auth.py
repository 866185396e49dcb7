"""`trainfarm login/logout/whoami`, `tokens`, `users`, `admin create-user`, `audit` and the jobs
owner filter, against one real master (SQLite) for the whole module.

Every test gets its own config folder (XDG_CONFIG_HOME), so the tokens file `login` writes is the
test's own, and its own data dir, so no standalone farm's credentials on this machine are found.
The master is shared, so each test makes users under names of its own."""

from __future__ import annotations

import json
import re
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from typer.testing import Result

from tests.conftest import farm_settings, run_cli
from trainfarm.services import RedisServer, SeaweedS3
from trainfarm.services.farm import MasterProcess
from trainfarm.token_store import save_token, tokens_file

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def master(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, s3_server: SeaweedS3
) -> Iterator[MasterProcess]:
    """One master for the module (starting one takes seconds); settings as conftest's `settings`."""
    root = tmp_path_factory.mktemp("cli-auth")
    redis.Redis.from_url(redis_server.url).flushdb()
    settings = farm_settings(root / "farm", redis_server, s3_server, f"sqlite:///{root / 'master.db'}")
    with MasterProcess(root / "master", settings) as proc:
        yield proc


@pytest.fixture(autouse=True)
def own_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("TRAINFARM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("TRAINFARM_TOKEN", raising=False)
    return tmp_path / "config"


def anonymous(master: MasterProcess, *args: str, **kwargs: object) -> Result:
    """The CLI with no TRAINFARM_TOKEN: it goes by the tokens file, as a person's shell does."""
    return run_cli(master.url, *args, **kwargs)


def unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def add_user(master: MasterProcess, role: str = "member") -> tuple[str, str]:
    """A new user of `role`, and a login token of theirs."""
    name = unique(role)
    with master.client() as api:
        api.post("/users", json={"name": name, "role": role, "password": PASSWORD}).raise_for_status()
    return name, login_token(master, name)


def login_token(master: MasterProcess, name: str, password: str = PASSWORD) -> str:
    answer = httpx.post(f"{master.url}/api/auth/login", data={"username": name, "password": password})
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def me_status(master: MasterProcess, token: str) -> int:
    return httpx.get(f"{master.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code


def one_line(result: Result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# login, whoami, logout ----------------------------------------------------------------------------


def test_login_at_the_prompt_saves_a_private_token_later_commands_use(master: MasterProcess) -> None:
    assert anonymous(master, "whoami").exit_code == 1  # nothing saved yet

    result = anonymous(master, "login", input=f"admin\n{master.credentials.password}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output and master.credentials.password not in result.output
    path = tokens_file()
    last = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"logged in to {re.escape(master.url)} as admin \(admin\); token saved in {re.escape(str(path))}, "
        r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d",
        last,
    ), last
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())[master.url]
    assert saved.startswith("tf_") and me_status(master, saved) == 200

    whoami = anonymous(master, "whoami")
    assert one_line(whoami) == f"admin (admin) at {master.url}; token from {path}"
    jobs = anonymous(master, "jobs")
    assert jobs.exit_code == 0, jobs.output


def test_password_stdin_logs_in_and_a_wrong_password_is_one_line(master: MasterProcess) -> None:
    name, _ = add_user(master, "viewer")
    result = anonymous(master, "login", "--user", name, "--password-stdin", input=f"{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert one_line(result).startswith(f"logged in to {master.url} as {name} (viewer); token saved in ")

    wrong = anonymous(master, "login", "-u", name, "--password-stdin", input="not the password\n")
    assert wrong.exit_code == 1
    assert one_line(wrong) == "error: wrong user name or password"
    # The saved token is still the good one.
    assert one_line(anonymous(master, "whoami")).startswith(f"{name} (viewer) at ")


def test_login_with_an_existing_token_checks_and_saves_it(master: MasterProcess) -> None:
    name, token = add_user(master)
    assert anonymous(master, "login", "--token", "-", input=f"{token}\n").exit_code == 0
    assert json.loads(tokens_file().read_text()) == {master.url: token}
    assert one_line(anonymous(master, "whoami")).startswith(f"{name} (member) at ")

    bogus = anonymous(master, "login", "--token", "tf_" + "x" * 40)
    assert bogus.exit_code == 1
    assert one_line(bogus).startswith(f"error: the master at {master.url} refuses that token")
    assert json.loads(tokens_file().read_text()) == {master.url: token}


def test_ctrl_c_or_the_end_of_input_at_a_prompt_exits_130(master: MasterProcess) -> None:
    result = anonymous(master, "login", input="admin\n")  # stdin ends at the password prompt
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines()[-1] == "cancelled"
    assert not tokens_file().exists()


def test_logout_revokes_the_token_on_the_master_and_forgets_it(master: MasterProcess) -> None:
    name, _ = add_user(master)
    anonymous(master, "login", "-u", name, "--password-stdin", input=f"{PASSWORD}\n")
    saved = json.loads(tokens_file().read_text())[master.url]

    result = anonymous(master, "logout")
    assert result.exit_code == 0, result.output
    assert "revoked on the master" in one_line(result)
    assert me_status(master, saved) == 401
    assert master.url not in json.loads(tokens_file().read_text())

    again = anonymous(master, "logout")
    assert again.exit_code == 0
    assert one_line(again).startswith(f"not logged in to {master.url}: no token saved")


def test_logout_forgets_the_token_when_the_master_is_gone_or_refuses_it(master: MasterProcess) -> None:
    gone = closed_port_url()
    save_token(gone, "tf_" + "g" * 40)
    result = run_cli(gone, "logout")
    assert result.exit_code == 0, result.output
    assert "did not answer, so the token is NOT revoked there" in one_line(result)
    assert gone not in json.loads(tokens_file().read_text())

    save_token(master.url, "tf_" + "r" * 40)
    refused = anonymous(master, "logout")
    assert refused.exit_code == 0
    assert "no longer accepted the token" in one_line(refused)
    assert json.loads(tokens_file().read_text()) == {}


def test_a_token_the_master_refuses_prints_not_logged_in(master: MasterProcess) -> None:
    for result in (anonymous(master, "jobs"), run_cli(master, "jobs", token="tf_" + "b" * 40)):
        assert result.exit_code == 1
        assert one_line(result).startswith(f"error: not logged in to {master.url}: run trainfarm login (")


# tokens -------------------------------------------------------------------------------------------


def test_tokens_create_list_and_revoke(master: MasterProcess) -> None:
    name, token = add_user(master)
    made = run_cli(master, "tokens", "create", "ci", "--expires-in-days", "30", token=token)
    assert made.exit_code == 0, made.output
    new = made.stdout.strip()
    assert new.startswith("tf_") and "\n" not in new
    assert "it is not shown again" in made.stderr
    assert one_line(run_cli(master, "whoami", token=new)) == (
        f"{name} (member) at {master.url}; token from TRAINFARM_TOKEN"
    )

    listing = run_cli(master, "tokens", "list", token=token)
    assert listing.exit_code == 0, listing.output
    [row] = [line for line in listing.stdout.splitlines() if f"{new[:9]}..." in line]
    token_id, token_name, _, kind = row.split()[:4]
    assert (token_name, kind) == ("ci", "api")
    assert new not in listing.stdout

    admins_view = run_cli(master, "tokens", "list", "--user", name)
    assert f"{new[:9]}..." in admins_view.stdout and name in admins_view.stdout
    assert f"{new[:9]}..." in run_cli(master, "tokens", "list", "--all").stdout
    refused = run_cli(master, "tokens", "list", "--all", token=token)
    assert refused.exit_code == 1
    assert one_line(refused).startswith("error: only admins may do this")

    revoked = run_cli(master, "tokens", "revoke", token_id, token=token)
    assert revoked.exit_code == 0, revoked.output
    assert one_line(revoked) == f"revoked token {token_id} (ci, {new[:9]}...) of {name}"
    assert me_status(master, new) == 401
    assert f"{new[:9]}..." not in run_cli(master, "tokens", "list", token=token).stdout
    assert f"{new[:9]}..." in run_cli(master, "tokens", "list", "--revoked", token=token).stdout


# users, admin create-user --------------------------------------------------------------------------


def test_users_add_list_disable_enable_and_set_role(master: MasterProcess) -> None:
    name = unique("bob")
    added = run_cli(master, "users", "add", name, "--role", "member", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert added.exit_code == 0, added.output
    assert added.stdout.strip().splitlines()[-1] == f"added user {name} (member)"
    assert PASSWORD not in added.output

    listing = run_cli(master, "users", "list")
    [row] = [line.split() for line in listing.stdout.splitlines() if line.startswith(f"{name} ")]
    assert row[:3] == [name, "member", "no"]

    token = login_token(master, name)
    assert me_status(master, token) == 200
    assert run_cli(master, "users", "disable", name).exit_code == 0
    assert me_status(master, token) == 401  # at once, not when the token expires
    [row] = [line.split() for line in run_cli(master, "users", "list").stdout.splitlines() if name in line]
    assert row[2] == "yes"
    assert run_cli(master, "users", "enable", name).exit_code == 0
    assert me_status(master, token) == 200

    changed = run_cli(master, "users", "set-role", name, "viewer")
    assert one_line(changed) == f"{name} is now viewer"
    assert one_line(run_cli(master, "whoami", token=token)).startswith(f"{name} (viewer) at ")
    refused = run_cli(master, "users", "list", token=token)
    assert refused.exit_code == 1
    assert one_line(refused) == f"error: only admins may do this ('{name}' is a viewer)"

    new_password = "another long password"
    reset = run_cli(master, "users", "set-password", name, "--password-stdin", input=f"{new_password}\n")
    assert one_line(reset) == f"password of {name} changed"
    assert login_token(master, name, new_password).startswith("tf_")

    short = run_cli(master, "users", "add", unique("eve"), "--password-stdin", input="short\n")
    assert short.exit_code == 1
    assert (
        one_line(short).startswith("error: a password needs at least") and "(field: password)" in short.output
    )


def test_admin_create_user_writes_the_database_and_the_user_logs_in(master: MasterProcess) -> None:
    name = unique("carol")
    db = ["--database-url", master.settings.database_url]
    made = anonymous(
        master,
        *("admin", "create-user", name, "--role", "member", "--password-stdin", "--token-name", "ci", *db),
        input=f"{PASSWORD}\n",
    )
    assert made.exit_code == 0, made.output
    created, token = made.stdout.strip().splitlines()
    assert created.startswith(f"created user {name} (member) in sqlite:///")
    assert "not shown again" in made.stderr
    assert one_line(run_cli(master, "whoami", token=token)).startswith(f"{name} (member) at ")

    login = anonymous(master, "login", "-u", name, "--password-stdin", input=f"{PASSWORD}\n")
    assert login.exit_code == 0, login.output
    assert f"as {name} (member)" in login.output

    twice = anonymous(master, "admin", "create-user", name, "--password-stdin", *db, input=f"{PASSWORD}\n")
    assert twice.exit_code == 1
    assert one_line(twice) == f"error: user '{name}' exists (field: name)"
    bad = anonymous(master, "admin", "create-user", "me", "--password-stdin", *db, input=f"{PASSWORD}\n")
    assert one_line(bad) == "error: 'me' is reserved; pick another name (field: name)"


# audit, jobs --owner / --mine ----------------------------------------------------------------------


def test_audit_lists_what_was_done_to_admins_only(master: MasterProcess) -> None:
    name, token = add_user(master)
    run_cli(master, "users", "set-role", name, "viewer")

    result = run_cli(master, "audit", "--action", "user", "--limit", "500")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines() if f"user {name}" in line]
    actions = {row[3] for row in rows}  # time is two words: date and clock
    assert {"user.create", "user.set_role"} <= actions, result.stdout
    assert all(row[2] == "admin" for row in rows)

    mine = run_cli(master, "audit", "--user", name, "--all")
    assert any("token.create" in line and f"user {name}" in line for line in mine.stdout.splitlines())

    paged = run_cli(master, "audit", "--limit", "1")
    assert paged.exit_code == 0
    assert len([line for line in paged.stdout.splitlines() if line.strip()]) == 2  # header and one entry
    assert "(the newest 1; --all or --limit for more)" in paged.stderr

    refused = run_cli(master, "audit", token=token)
    assert refused.exit_code == 1
    assert one_line(refused).startswith("error: only admins may do this")


def test_jobs_mine_and_owner_filter_and_show_the_owner(master: MasterProcess) -> None:
    name, token = add_user(master)
    spec = {"command": ["python", "-c", "pass"], "queue": "cpu"}
    with master.client() as admin, master.client(token) as member:
        admins_job = admin.post("/jobs", json={**spec, "name": "admins-job"}).json()["id"]
        members_job = member.post("/jobs", json={**spec, "name": "members-job"}).json()["id"]

    def rows(result: Result) -> dict[int, list[str]]:
        assert result.exit_code == 0, result.output
        return {int(r[0]): r for r in (line.split() for line in result.stdout.splitlines()[1:]) if r}

    mine = rows(run_cli(master, "jobs", "--mine", token=token))
    assert list(mine) == [members_job]
    assert mine[members_job][1:5] == ["members-job", "queued", "cpu", name]
    by_owner = rows(run_cli(master, "jobs", "--owner", name))
    assert list(by_owner) == [members_job]
    everyone = rows(run_cli(master, "jobs", "--limit", "500"))
    assert {admins_job, members_job} <= set(everyone) and everyone[admins_job][4] == "admin"

    shown = run_cli(master, "show", str(members_job))
    assert shown.exit_code == 0, shown.output
    assert ["owner", name] in [line.split() for line in shown.stdout.splitlines()]
    both = run_cli(master, "jobs", "--mine", "--owner", name)
    assert one_line(both) == "error: give --owner or --mine, not both (field: --owner)"


# Last: the failed logins it makes keep this address from logging in for the rest of the window.


def test_too_many_failed_logins_say_when_to_try_again(master: MasterProcess) -> None:
    for _ in range(10):
        result = anonymous(master, "login", "-u", "nobody", "--password-stdin", input="wrong password\n")
        assert result.exit_code == 1
        if "wrong user name or password" not in result.output:
            break
    line = one_line(result)
    assert re.fullmatch(r"error: more than 5 failed logins .*: try again in \d+ s", line), line
