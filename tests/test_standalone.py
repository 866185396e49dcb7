"""`trainfarm standalone` as a user runs it: a whole farm from one command, a second farm on its data
dir refused while it runs, Ctrl-C stops all of it, and a second start finds the jobs and datasets of
the first."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from shared.settings import DEV_S3_SECRET
from tests.conftest import wait_for, wait_status
from trainfarm.services import free_port

ROOT = Path(__file__).resolve().parent.parent


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_farm(data_dir: Path, api_port: int, flower_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFARM_")}
    return subprocess.Popen(
        [sys.executable, "-m", "trainfarm.cli", "standalone", "--data-dir", str(data_dir),
         "--port", str(api_port), "--flower-port", str(flower_port)],
        cwd=ROOT,
        env={**env, "TRAINFARM_NODE_NAME": "standalone-node"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def admin_client(api_url: str, data_dir: Path) -> httpx.Client:
    """The API as the admin the farm made on its first start (kept in its data dir)."""
    token = json.loads((data_dir / "credentials.json").read_text())["token"]
    return httpx.Client(base_url=f"{api_url}/api", timeout=30, headers={"Authorization": f"Bearer {token}"})


def farm_env(data_dir: Path, home: Path) -> dict[str, str]:
    """A shell on the farm's machine as its user: no TRAINFARM_TOKEN and no saved login, only the
    farm's data dir (where its credentials.json is)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFARM_")}
    (home / "config").mkdir(parents=True, exist_ok=True)
    return {
        **env,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "TRAINFARM_DATA_DIR": str(data_dir),
    }


def check_flower_asks_for_the_admin(flower_port: int, data_dir: Path) -> None:
    """Flower's API wants the first admin's name and password; its health check (the readiness
    probe's) needs none: Flower 2.2 guards its pages and API with --basic_auth but not /healthcheck."""
    creds = json.loads((data_dir / "credentials.json").read_text())
    flower = f"http://127.0.0.1:{flower_port}"
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
    wrong = httpx.get(f"{flower}/api/workers", auth=(creds["user"], "not-the-password"), timeout=10)
    assert wrong.status_code == 401
    right = httpx.get(f"{flower}/api/workers", auth=(creds["user"], creds["password"]), timeout=10)
    assert right.status_code == 200, right.text
    assert httpx.get(f"{flower}/healthcheck", timeout=10).status_code == 200


def wait_healthy(api_url: str, flower_port: int, farm: subprocess.Popen[bytes]) -> None:
    def healthy() -> bool:
        assert farm.poll() is None, farm.stdout.read().decode()  # type: ignore[union-attr]
        try:
            api = httpx.get(f"{api_url}/api/health", timeout=2)
            flower = httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=2)
        except httpx.HTTPError:
            return False
        return api.status_code == 200 and flower.status_code == 200

    wait_for(healthy, timeout=120, interval=0.5, what="the standalone farm")


def interrupt(farm: subprocess.Popen[bytes]) -> str:
    farm.send_signal(signal.SIGINT)
    out, _ = farm.communicate(timeout=90)
    assert farm.returncode == 0, out.decode()
    return out.decode()


def check_a_second_farm_on_the_data_dir_is_refused(data_dir: Path, farm: subprocess.Popen[bytes]) -> None:
    """Run inside the first farm's test, so the suite starts one farm fewer."""
    ports = (data_dir / "ports.json").read_text()
    second = start_farm(data_dir, free_port(), free_port())
    out, _ = second.communicate(timeout=60)
    said = [line for line in out.decode().splitlines() if line.strip()]
    assert second.returncode == 1, said
    # One line, naming the farm that holds the directory; nothing of the first farm touched.
    assert len(said) == 1 and f"in use by another running farm (pid {farm.pid})" in said[0], said
    assert (data_dir / "ports.json").read_text() == ports
    assert farm.poll() is None


def test_standalone_runs_a_job_stops_cleanly_and_restarts_on_its_data(tmp_path):
    data_dir, api_port, flower_port = tmp_path / "farm", free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    farm = start_farm(data_dir, api_port, flower_port)
    try:
        wait_healthy(api_url, flower_port, farm)
        check_a_second_farm_on_the_data_dir_is_refused(data_dir, farm)
        api = admin_client(api_url, data_dir)
        assert api.post("/datasets", params={"name": "d.csv"}, content=b"a,b\n1,2\n").status_code == 201
        job = api.post("/jobs", json={"command": [sys.executable, "-c", "print('hello farm')"]}).json()
        wait_status(api, job["id"], {"succeeded"})
        assert "hello farm" in [line["text"] for line in api.get(f"/jobs/{job['id']}/logs").json()["lines"]]
        nodes = wait_for(lambda: api.get("/nodes").json(), timeout=30, what="node")
        assert [n["name"] for n in nodes] == ["standalone-node"]  # type: ignore[union-attr]
        check_flower_asks_for_the_admin(flower_port, data_dir)
        # The CLI on the same machine finds the farm's credentials with no login and no token.
        cli = subprocess.run(
            [sys.executable, "-m", "trainfarm.cli", "--api-url", api_url, "jobs"],
            cwd=ROOT, env=farm_env(data_dir, tmp_path / "home"), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "succeeded" in cli.stdout, cli.stdout
    finally:
        output = interrupt(farm)
    assert "stopping redis" in output
    assert not (data_dir / "farm.pid").exists()  # a clean stop leaves no holder behind
    # The banner says where the first admin's password and token are, on one line, whole.
    assert f"Login as admin: password and API token in {data_dir / 'credentials.json'} " in output, output
    # Its keys and passwords were made for it, owner-only; none is a public default.
    for secret in ("redis.password", "s3-admin.secret", "s3-worker.json", "signing.key", "credentials.json"):
        assert (data_dir / secret).stat().st_mode & 0o077 == 0, secret
    assert (data_dir / "s3-admin.secret").read_text().strip() != DEV_S3_SECRET
    assert data_dir.stat().st_mode & 0o077 == 0
    ports = json.loads((data_dir / "ports.json").read_text())
    for name, port in ports.items():
        assert not port_open(port), f"{name} still listens on {port} after Ctrl-C"

    farm = start_farm(data_dir, api_port, flower_port)
    try:
        wait_healthy(api_url, flower_port, farm)
        api = admin_client(api_url, data_dir)
        assert [j["status"] for j in api.get("/jobs").json()["items"]] == ["succeeded"]
        assert [d["name"] for d in api.get("/datasets").json()] == ["d.csv"]
        # The archived log is in the S3 server's data, which survived the restart too.
        assert "hello farm" in [line["text"] for line in api.get(f"/jobs/{job['id']}/logs").json()["lines"]]
    finally:
        interrupt(farm)


def test_demo_sweep_runs_a_sweep_file_to_its_best_trial(tmp_path):
    """`trainfarm demo --sweep FILE` (what `scripts/demo --sweep examples/sweep.yaml` runs): a
    standalone farm runs every trial of the file on the bundled dataset, two at a time, and names the
    best; the exit status says the sweep succeeded."""
    data_dir, output = tmp_path / "farm", tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINFARM_")}
    # Into a file, not a pipe: the farm's processes must not be able to hold the test up by it.
    with output.open("w") as out:
        demo = subprocess.run(
            [sys.executable, "-m", "trainfarm.cli", "demo", "--data-dir", str(data_dir),
             "--port", str(free_port()), "--sweep", str(ROOT / "tests" / "fixtures" / "small_sweep.yaml")],
            cwd=ROOT, env={**env, "COLUMNS": "200"}, stdout=out, stderr=subprocess.STDOUT, timeout=170,
        )  # fmt: skip
    said = output.read_text()
    assert demo.returncode == 0, said
    assert "uploaded dataset digits.csv" in said, said
    [summary] = [line for line in said.splitlines() if line.startswith("sweep 1 succeeded in ")]
    assert ": 3 trials, 0 pruned; best: trial " in summary, summary
    best = float(summary.rsplit(" ", 1)[1])
    assert 0.5 < best <= 1.0, summary  # two epochs of the MLP already reach 0.8 and more on digits
    assert "Traceback" not in said, said
    assert not (data_dir / "farm.pid").exists()  # the farm stopped behind it
