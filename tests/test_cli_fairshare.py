"""`trainfarm users limits / set-limits`, `trainfarm fairshare` and the wait reasons in `jobs` and
`show`, against a real master (no worker: every job waits)."""

from __future__ import annotations

import uuid

import httpx
from rich.console import Console

from tests.conftest import run_cli, wait_for
from trainfarm import render
from trainfarm.services.farm import MasterProcess

PASSWORD = "correct horse battery staple"
COMMAND = {"queue": "cpu", "command": ["python", "-c", "pass"]}


def add_member(master: MasterProcess) -> tuple[str, str]:
    """A new member and a login token of theirs."""
    name = f"member-{uuid.uuid4().hex[:6]}"
    with master.client() as api:
        api.post("/users", json={"name": name, "role": "member", "password": PASSWORD}).raise_for_status()
    answer = httpx.post(f"{master.url}/api/auth/login", data={"username": name, "password": PASSWORD})
    answer.raise_for_status()
    return name, str(answer.json()["access_token"])


def rows(output: str) -> dict[str, list[str]]:
    """A table's rows by their first two words (user, queue), the rest split on spaces."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) > 2:
            found[f"{words[0]} {words[1]}"] = words[2:]
    return found


def test_set_limits_sets_one_cap_keeps_the_other_and_resets_to_the_default(master: MasterProcess) -> None:
    name, _ = add_member(master)

    shown = run_cli(master, "users", "limits", name)
    assert shown.exit_code == 0, shown.output
    assert rows(shown.output)[f"{name} gpu"] == ["no", "cap", "(default)", "2000", "(default)"]

    capped = run_cli(master, "users", "set-limits", name, "--gpus", "4")
    assert capped.exit_code == 0, capped.output
    assert rows(capped.output)[f"{name} gpu"] == ["4", "2000", "(default)"]

    # --queued alone keeps the GPU cap set before.
    queued = run_cli(master, "users", "set-limits", name, "--queued", "10")
    assert rows(queued.output)[f"{name} gpu"] == ["4", "10"]
    assert rows(queued.output)[f"{name} cpu"] == ["no", "cap", "(default)", "2000", "(default)"]

    cpu = run_cli(master, "users", "set-limits", name, "--queue", "cpu", "--devices", "2")
    assert rows(cpu.output)[f"{name} cpu"] == ["2", "2000", "(default)"]

    reset = run_cli(master, "users", "set-limits", name, "--default")
    assert reset.exit_code == 0, reset.output
    assert rows(reset.output)[f"{name} gpu"] == ["no", "cap", "(default)", "2000", "(default)"]
    assert rows(run_cli(master, "users", "limits", name).output)[f"{name} cpu"] == ["2", "2000", "(default)"]


def one_error_line(result: object) -> str:
    output = result.output.strip().splitlines()  # type: ignore[attr-defined]
    assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
    assert len(output) == 1 and output[0].startswith("error: "), output
    return output[0]


def test_set_limits_refuses_in_one_line(master: MasterProcess) -> None:
    name, token = add_member(master)
    assert "not found" in one_error_line(run_cli(master, "users", "set-limits", "nobody-here", "--gpus", "1"))
    assert "admin" in one_error_line(run_cli(master, "users", "set-limits", name, "--gpus", "1", token=token))
    line = one_error_line(run_cli(master, "users", "set-limits", name, "--queue", "cpu", "--gpus", "1"))
    assert "--devices" in line
    assert "alone" in one_error_line(run_cli(master, "users", "set-limits", name, "--default", "--gpus", "1"))
    assert "--queued" in one_error_line(run_cli(master, "users", "set-limits", name))
    # A member reads their own caps, not another's.
    assert rows(run_cli(master, "users", "limits", name, token=token).output)[f"{name} gpu"][0] == "no"
    assert "admin" in one_error_line(run_cli(master, "users", "limits", "admin", token=token))

    helped = run_cli(master, "users", "set-limits", "--help")
    assert helped.exit_code == 0
    for option in ("--gpus", "--devices", "--queued", "--default", "--queue"):
        assert option in helped.output


def test_fairshare_jobs_and_show_say_why_a_job_waits(master: MasterProcess, api: httpx.Client) -> None:
    name, token = add_member(master)
    with httpx.Client(base_url=f"{master.url}/api", headers={"Authorization": f"Bearer {token}"}) as mine:
        job_id = mine.post("/jobs", json=COMMAND).raise_for_status().json()["id"]
    reason = "waiting: no worker online takes jobs from queue cpu"
    wait_for(lambda: api.get(f"/jobs/{job_id}").json()["wait_reason"] == reason, what="the wait reason")

    share = run_cli(master, "fairshare")
    assert share.exit_code == 0, share.output
    assert "cpu: 0 slots (0 in use), 1 waiting, 0 workers" in share.output
    user_row = next(line.split() for line in share.output.splitlines() if line.startswith(name))
    assert user_row == [name, "0/no", "cap", "1/2000", "0.00", "dev-h", "0"]

    listed = run_cli(master, "jobs")
    assert "WAITING" in listed.output
    job_row = next(line for line in listed.output.splitlines() if line.startswith(str(job_id)))
    assert job_row.rstrip().endswith("no worker online takes jobs from queue cpu")

    shown = run_cli(master, "show", str(job_id))
    assert f"waiting     {reason}" in shown.output or any(
        line.split(None, 1) == ["waiting", reason] for line in shown.output.splitlines()
    ), shown.output
    assert "preemptions" not in shown.output


def job(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 7,
        "name": None,
        "status": "queued",
        "queue": "gpu",
        "owner": "alice",
        "attempts": 1,
        "priority": 5,
        "created_at": "2025-01-01T12:00:00",
        "spec": {"command": ["python", "train.py"]},
        "wait_reason": "waiting: alice already uses 4 of their 4 GPUs on gpu",
    }
    return {**base, **changes}


def printed(table: object, width: int) -> str:
    out = Console(width=width, record=True, color_system=None)
    out.print(table)
    return out.export_text()


def test_the_wait_column_is_cut_to_the_terminal_and_only_there_when_a_job_waits() -> None:
    narrow = printed(render.jobs_table([job()]), 100)
    assert all(len(line) <= 100 for line in narrow.splitlines())
    assert "…" in narrow and "WAITING" in narrow
    wide = printed(render.jobs_table([job()]), 400)
    assert "alice already uses 4 of their 4 GPUs on gpu" in wide and "waiting:" not in wide
    assert "WAITING" not in printed(render.jobs_table([job(status="succeeded", wait_reason=None)]), 400)


def test_show_counts_preemptions_and_leaves_out_the_reason_of_a_running_job() -> None:
    summary = printed(render.job_summary(job(status="running", preemptions=2)), 200)
    assert any(line.split() == ["preemptions", "2"] for line in summary.splitlines())
    assert "already uses" not in summary
