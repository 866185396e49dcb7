"""The `trainfarm` CLI against a real master (and a real worker where jobs must run), plus the
client's reconnect and checksum logic against canned HTTP answers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from tests.conftest import DIGITS, run_cli
from trainfarm.cli import app
from trainfarm.cli_jobs import follow_logs, parse_hyperparameters
from trainfarm.client import ApiClient, ChecksumMismatch

PY = sys.executable
#: CLI tests are about the CLI, not the database: SQLite is enough.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

runner = CliRunner()


def cli(master, *args: str, **kwargs):
    return run_cli(master, *args, **kwargs)


def program_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith("[trainfarm]")]


@SQLITE
def test_submit_follow_show_logs_and_artifacts(master, worker, tmp_path):
    code = "for i in range(300): print(f'line {i}')"
    result = cli(master, "submit", "--queue", "cpu", "--name", "printer", "-f", "--", PY, "-c", code)
    assert result.exit_code == 0, result.output
    assert program_lines(result.stdout) == [f"line {i}" for i in range(300)]
    assert "job 1 queued on queue cpu" in result.stderr
    assert "job 1 succeeded" in result.stderr

    listing = cli(master, "jobs")
    assert listing.exit_code == 0
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("1 ")]
    assert row.split()[:4] == ["1", "printer", "succeeded", "cpu"]

    shown = cli(master, "show", "1")
    assert shown.exit_code == 0
    assert "printer" in shown.stdout and "succeeded" in shown.stdout and "node-1" in shown.stdout

    logs = cli(master, "logs", "1")
    assert program_lines(logs.stdout) == [f"line {i}" for i in range(300)]
    assert cli(master, "logs", "-f", "1").exit_code == 0

    write = "import os,pathlib; pathlib.Path(os.environ['TRAINFARM_OUTPUT_DIR'],'out.txt').write_text('hi')"
    assert cli(master, "submit", "--queue", "cpu", "-f", "--", PY, "-c", write).exit_code == 0
    assert "out.txt" in cli(master, "artifacts", "2").stdout
    download = cli(master, "artifacts", "2", "--download", "out.txt", "--out", str(tmp_path / "got"))
    assert download.exit_code == 0, download.output
    assert (tmp_path / "got" / "out.txt").read_text() == "hi"
    missing = cli(master, "artifacts", "2", "--download", "nope.bin", "--out", str(tmp_path))
    assert missing.exit_code == 1
    assert "job 2 has no artifact 'nope.bin' (field: name)" in missing.stderr

    fail = "import sys; print('bye'); sys.exit(3)"
    failed = cli(master, "submit", "--queue", "cpu", "--retries", "0", "-f", "--", PY, "-c", fail)
    assert failed.exit_code == 1
    assert "bye" in failed.stdout and "exited with code 3" in failed.stderr
    assert cli(master, "logs", "-f", "3").exit_code == 1


@SQLITE
def test_datasets_upload_and_list(master):
    uploaded = cli(master, "datasets", "upload", str(DIGITS))
    assert uploaded.exit_code == 0, uploaded.output
    assert uploaded.stdout.startswith("uploaded digits.csv")

    listing = cli(master, "datasets", "list")
    [row] = [line for line in listing.stdout.splitlines() if line.startswith("digits.csv")]
    assert row.split()[1:3] == [f"{DIGITS.stat().st_size / 1024:.1f}", "KiB"]

    again = cli(master, "datasets", "upload", str(DIGITS))
    assert again.exit_code == 1
    assert "exists; pass overwrite=true (CLI: --overwrite) to replace it (field: name)" in again.stderr
    renamed = cli(master, "datasets", "upload", str(DIGITS), "--name", "d2.csv")
    assert renamed.exit_code == 0
    assert cli(master, "datasets", "upload", str(DIGITS), "--overwrite").exit_code == 0
    assert cli(master, "datasets", "upload", "no-such-file.csv").exit_code == 2


@SQLITE
def test_cancel_and_bad_input(master):
    submitted = cli(master, "submit", "--queue", "cpu", "--hp", "lr=0.01", "--", PY, "-c", "pass")
    assert submitted.exit_code == 0
    assert submitted.stdout.strip() == "job 1 queued on queue cpu"
    cancelled = cli(master, "cancel", "1")
    assert cancelled.stdout.strip() == "job 1 cancelled"
    assert "cancelled" in cli(master, "show", "1").stdout
    again = cli(master, "cancel", "1")
    assert (again.exit_code, again.stderr.strip()) == (1, "error: job 1 has already ended (cancelled)")

    bad = cli(master, "submit", "--devices", "0", "--", PY, "-c", "pass")
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: devices:") and "(field: devices)" in bad.stderr

    both = cli(master, "submit", "--image", "lab/torch:2", "--env", "torch2", "--", "python", "t.py")
    assert both.exit_code == 1 and "give at most one of 'image' (Docker) or 'environment'" in both.stderr
    docker = cli(master, "submit", "--image", "lab/torch:2", "--memory", "512", "--cpus", "1.5", "--", "true")
    assert docker.exit_code == 0, docker.output
    shown = httpx.get(f"{master.url}/api/jobs/2", headers={"Authorization": f"Bearer {master.token}"}).json()[
        "spec"
    ]
    assert (shown["image"], shown["memory_mb"], shown["cpus"]) == ("lab/torch:2", 512, 1.5)

    unknown = cli(master, "show", "999")
    assert (unknown.exit_code, unknown.stderr.strip()) == (1, "error: job 999 not found (field: job_id)")
    assert cli(master, "logs", "-f", "999").exit_code == 1
    assert cli(master, "submit", "--hp", "novalue", "--", "true").exit_code == 2


def test_unreachable_master_is_one_helpful_line():
    for args in (["jobs"], ["logs", "-f", "1"], ["datasets", "upload", str(DIGITS)]):
        result = cli("http://127.0.0.1:9", *args)
        assert result.exit_code == 1
        assert "cannot reach the trainfarm master at http://127.0.0.1:9" in result.stderr
        assert "is the master running? set TRAINFARM_API_URL or --api-url" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["submit"],
        ["jobs"],
        ["show"],
        ["logs"],
        ["cancel"],
        ["artifacts"],
        ["nodes"],
        ["datasets"],
        ["datasets", "upload"],
        ["datasets", "list"],
    ],
)
def test_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_hyperparameters_are_json_where_they_parse():
    parsed = parse_hyperparameters(["lr=0.01", "hidden=[64,32]", "opt=adam", "on=true", "x=nan", "eq=a=b"])
    assert parsed == {"lr": 0.01, "hidden": [64, 32], "opt": "adam", "on": True, "x": "nan", "eq": "a=b"}


def test_ctrl_c_while_following_exits_130_quietly():
    class Interrupted:
        def stream_logs(self, job_id: int, after: str | None):
            raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        follow_logs(Interrupted(), 1)  # type: ignore[arg-type]
    assert stopped.value.exit_code == 130


def sse(*events: tuple[str, dict, str | None]) -> bytes:
    out = ": keepalive\n\n"
    for name, data, event_id in events:
        out += (f"id: {event_id}\n" if event_id else "") + f"event: {name}\ndata: {json.dumps(data)}\n\n"
    return out.encode()


def test_log_stream_reconnects_after_the_last_event_id():
    seen_after: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        seen_after.append(after)
        if after is None:  # the first connection drops after one batch, before `end`
            return httpx.Response(
                200, content=sse(("log", {"attempt": 1, "first": 0, "lines": ["a", "b"]}, "1-1"))
            )
        log = ("log", {"attempt": 1, "first": 2, "lines": ["c"]}, "1-2")
        return httpx.Response(200, content=sse(log, ("end", {"status": "succeeded"}, None)))

    with ApiClient("http://farm", transport=httpx.MockTransport(handler)) as api:
        events = list(api.stream_logs(7))
    assert seen_after == [None, "1-1"]
    assert [d.get("lines") or d["status"] for _, d in events] == [["a", "b"], ["c"], "succeeded"]


def test_download_with_a_wrong_checksum_leaves_no_file(tmp_path: Path):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/jobs/3/artifacts/checkpoints/last.ckpt"
        return httpx.Response(200, content=b"data", headers={"X-Checksum-SHA256": "0" * 64})

    transport = httpx.MockTransport(handler)
    with ApiClient("http://farm/api/", transport=transport) as api, pytest.raises(ChecksumMismatch):
        api.download_artifact(3, "checkpoints/last.ckpt", tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []
