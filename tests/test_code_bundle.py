"""User code bundles: packing rules, the /api/code routes and the submit-time check, the CLI's listing,
the worker's unpacking from real S3, the runtime helper in a bare interpreter, and one job end to end."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from shared.errors import FinalError
from shared.settings import Settings, child_environment
from shared.storage import ArtifactStore, code_bundle_key, make_s3_client
from tests.conftest import DIGITS, log_texts, run_cli, upload_dataset, wait_status
from trainfarm import bundle
from trainfarm.render import format_size
from worker.code_bundle import CodeBundles

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "project"
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
#: Small, so the oversize answer is tested without sending hundreds of MiB.
MAX_BUNDLE = 256 * 1024

runner = CliRunner()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"code_bundle_max_bytes": MAX_BUNDLE})


def cli(master, *args: str, **kwargs):
    return run_cli(master, *args, **kwargs)


def make_project(root: Path) -> Path:
    """A project with every kind of thing the packer must leave out next to the code it must keep."""
    files = {
        "train.py": "print('training')\n",
        "pkg/__init__.py": "",
        "pkg/model.py": "WIDTH = 8\n",
        "pkg/__pycache__/model.cpython-311.pyc": "x",
        "pkg/stale.pyc": "x",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".venv/pyvenv.cfg": "home = /usr/bin\n",
        ".venv/lib/site.py": "",
        "env/notes.txt": "an ordinary folder named env, no pyvenv.cfg\n",
        "node_modules/x.js": "",
        ".ipynb_checkpoints/a.ipynb": "{}",
        ".DS_Store": "",
        "data/big.bin": "0" * 5000,
        "runs/run1/log.txt": "ignored by pattern\n",
        "notes.tmp": "ignored by pattern\n",
        "keep/notes.tmp.txt": "kept: the pattern is *.tmp\n",
        ".trainfarmignore": "# experiment output\nruns/\n*.tmp\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "train.py").chmod(0o755)
    outside = root.parent / f"{root.name}-secret.txt"
    outside.write_text("not part of the project\n")
    (root / "secret.txt").symlink_to(outside)
    (root / "alias.py").symlink_to(root / "pkg" / "model.py")
    return root


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


# Packing ------------------------------------------------------------------------------------------


def test_packing_rules_listing_and_determinism(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    plan = bundle.scan(project, max_file_size=1024)

    assert [f.arcname for f in plan.files] == [
        ".trainfarmignore",
        "alias.py",
        "env/notes.txt",
        "keep/notes.tmp.txt",
        "pkg/__init__.py",
        "pkg/model.py",
        "train.py",
    ]
    assert {s.arcname: s.reason for s in plan.skipped} == {
        ".DS_Store": "macOS metadata",
        ".git/": "version control",
        ".ipynb_checkpoints/": "cache",
        ".venv/": "virtual environment",
        "data/big.bin": "4.9 KiB, over the 1.0 KiB file size limit",
        "node_modules/": "node modules",
        "notes.tmp": ".trainfarmignore: *.tmp",
        "pkg/__pycache__/": "cache",
        "pkg/stale.pyc": "compiled Python",
        "runs/": ".trainfarmignore: runs/",
        "secret.txt": "symlink outside the project",
    }

    first = plan.write(tmp_path / "a.tar.gz")
    assert first.sha256 == hashlib.sha256((tmp_path / "a.tar.gz").read_bytes()).hexdigest()
    assert tar_names(first.path) == [
        ".trainfarmignore", "alias.py", "data", "env", "env/notes.txt", "keep", "keep/notes.tmp.txt",
        "pkg", "pkg/__init__.py", "pkg/model.py", "train.py",
    ]  # fmt: skip
    with tarfile.open(first.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("alias.py").read() == b"WIDTH = 8\n"  # type: ignore[union-attr]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, 0, "", "")}
    assert members["train.py"].mode == 0o755 and members["pkg/model.py"].mode == 0o644

    # The same tree, touched and listed in another order, gives the same bytes; a changed file does not.
    os.utime(project / "pkg" / "model.py", (1, 1))
    assert bundle.scan(project, max_file_size=1024).write(tmp_path / "b.tar.gz").sha256 == first.sha256
    (project / "pkg" / "model.py").write_text("WIDTH = 9\n")
    assert bundle.scan(project, max_file_size=1024).write(tmp_path / "c.tar.gz").sha256 != first.sha256

    with pytest.raises(
        bundle.BundleError, match=r"over the 4.0 KiB limit; largest files: data/big.bin \(4.9 KiB\)"
    ):
        bundle.scan(project, max_file_size=10_000, max_total_size=4096)
    with pytest.raises(bundle.BundleError, match="is not a directory"):
        bundle.scan(project / "train.py")


def test_cli_lists_the_bundle_without_submitting(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    # Port 9 answers nothing: listing must not need the master.
    listed = cli("http://127.0.0.1:9", "submit", str(project), "--list", "--max-file-size", "1K")
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    code_size = bundle.scan(project, max_file_size=1024).total_size
    assert lines[0] == f"packing {project}: 7 files, {code_size} B"
    assert [line.split()[0] for line in lines[1:8]] == [
        ".trainfarmignore", "alias.py", "env/notes.txt", "keep/notes.tmp.txt",
        "pkg/__init__.py", "pkg/model.py", "train.py",
    ]  # fmt: skip
    assert lines[8] == "skipped 11:"
    big = next(line for line in lines if line.strip().startswith("data/big.bin"))
    assert big.split(None, 1)[1] == "4.9 KiB, over the 1.0 KiB file size limit"
    assert "secret.txt" in listed.stdout and "symlink outside the project" in listed.stdout
    assert "not uploaded (--dry-run)" in listed.stderr

    # The file size limit decides; with a larger one the data file is packed.
    roomy = cli("http://127.0.0.1:9", "submit", str(project), "--dry-run", "--max-file-size", "1M")
    assert roomy.stdout.splitlines()[0] == f"packing {project}: 8 files, {format_size(code_size + 5000)}"

    # Mistakes are one line each, before anything is packed or sent.
    for args, error in [
        ([str(tmp_path / "nope"), "--", "python"], f"error: {tmp_path / 'nope'} is not a directory (field: PROJECT)"),
        ([str(project), "--"], "error: give the command to run after `--`, e.g. -- python train.py (field: COMMAND)"),
        ([str(project), "--list", "--max-file-size", "lots"], "error: 'lots' is not a size like 20M, 500K or 1048576 (field: --max-file-size)"),
    ]:  # fmt: skip
        wrong = cli("http://127.0.0.1:9", "submit", *args)
        assert (wrong.exit_code, wrong.stderr, wrong.stdout) == (1, error + "\n", "")


# The master's routes and the submit-time check ---------------------------------------------------


def put(api: httpx.Client, digest: str, body: bytes) -> httpx.Response:
    return api.put(f"/code/{digest}", content=body)


@SQLITE
def test_api_upload_check_and_submit(api: httpx.Client, master, settings: Settings, tmp_path: Path) -> None:
    store = ArtifactStore(make_s3_client(settings), settings.s3_bucket)
    body = b"not really a tarball, but bytes with a digest"
    digest = hashlib.sha256(body).hexdigest()

    assert api.head(f"/code/{digest}").status_code == 404
    assert api.get(f"/code/{digest}").json()["field"] == "digest"

    wrong = put(api, digest, body + b"!")
    assert wrong.status_code == 422 and wrong.json()["field"] == "digest"
    assert not store.exists(code_bundle_key(digest))
    assert api.put("/code/not-a-digest", content=body).status_code == 422

    created = put(api, digest, body)
    assert (created.status_code, created.json()) == (201, {"digest": digest, "size": len(body)})
    assert store.exists(code_bundle_key(digest))
    assert put(api, digest, body).status_code == 200  # idempotent
    head = api.head(f"/code/{digest}")
    assert (head.status_code, head.headers["X-Bundle-Size"]) == (200, str(len(body)))

    big = os.urandom(MAX_BUNDLE + 1)
    big_digest = hashlib.sha256(big).hexdigest()
    too_big = put(api, big_digest, big)
    assert too_big.status_code == 413 and "over the master's limit" in too_big.json()["message"]
    assert not store.exists(code_bundle_key(big_digest))

    spec = {"command": ["python", "train.py"], "queue": "cpu"}
    unknown = "f" * 64
    refused = api.post("/jobs", json={**spec, "code": unknown})
    assert refused.status_code == 422 and refused.json()["field"] == "code"
    assert unknown in refused.json()["message"]
    batch = api.post("/jobs/batch", json={"jobs": [{**spec, "code": digest}, {**spec, "code": unknown}]})
    assert batch.status_code == 422 and batch.json()["field"] == "jobs[1].code"
    assert api.get("/jobs").json()["items"] == []  # all or nothing
    accepted = api.post("/jobs", json={**spec, "code": digest})
    assert accepted.status_code == 201, accepted.text

    # The CLI packs and uploads once per version, then submits with the digest (no worker: it stays queued).
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    first = cli(master, "submit", str(project), "--queue", "cpu", "--", "python", "train.py")
    assert first.exit_code == 0, first.output
    assert "packing" in first.stderr and "uploaded bundle" in first.stderr
    assert first.stdout.strip() == "job 2 queued on queue cpu"
    again = cli(master, "submit", str(project), "--queue", "cpu", "--", "python", "train.py", "--lr", "1")
    assert again.exit_code == 0, again.output
    assert "is on the farm already" in again.stderr and "uploaded" not in again.stderr
    specs = [api.get(f"/jobs/{n}").json()["spec"] for n in (2, 3)]
    assert specs[0]["code"] == specs[1]["code"] and store.exists(code_bundle_key(specs[0]["code"]))
    assert [s["command"] for s in specs] == [["python", "train.py"], ["python", "train.py", "--lr", "1"]]


# The worker's side ---------------------------------------------------------------------------------


def evil_bundle(path: Path, member: tarfile.TarInfo, data: bytes = b"") -> str:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("train.py")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@SQLITE
def test_worker_unpacks_from_s3_with_cache_and_refuses_unsafe_members(
    settings: Settings, tmp_path: Path
) -> None:
    s3 = make_s3_client(settings)
    store = ArtifactStore(s3, settings.s3_bucket)
    store.ensure_bucket()
    archive = bundle.scan(make_project(tmp_path / "proj"), max_file_size=1024).write(tmp_path / "b.tar.gz")
    store.put_file(code_bundle_key(archive.sha256), archive.path)
    bundles = CodeBundles(store, tmp_path / "cache")

    assert bundles.unpack(archive.sha256, tmp_path / "a1") == 7
    assert (tmp_path / "a1" / "pkg" / "model.py").read_text() == "WIDTH = 8\n"
    assert os.access(tmp_path / "a1" / "train.py", os.X_OK)
    assert not (tmp_path / "a1" / ".git").exists()

    # Gone from S3, the cached copy still serves; a damaged cached copy is not used.
    s3.remove_object(settings.s3_bucket, code_bundle_key(archive.sha256))
    assert bundles.unpack(archive.sha256, tmp_path / "a2") == 7
    (tmp_path / "cache" / f"{archive.sha256}.tar.gz").write_bytes(b"damaged")
    with pytest.raises(FinalError, match="is not in storage") as missing:
        bundles.unpack(archive.sha256, tmp_path / "a3")
    assert missing.value.field == "code"

    climbing = tarfile.TarInfo("../escaped.txt")
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    for n, (member, message) in enumerate(
        [(climbing, "unsafe path '../escaped.txt'"), (link, "neither a file nor a folder")]
    ):
        digest = evil_bundle(tmp_path / f"evil{n}.tar.gz", member, b"pwned")
        store.put_file(code_bundle_key(digest), tmp_path / f"evil{n}.tar.gz")
        with pytest.raises(FinalError, match=message):
            bundles.unpack(digest, tmp_path / "evil" / "code")
    assert not (tmp_path / "evil" / "escaped.txt").exists()
    assert not (tmp_path / "evil" / "code" / "passwd").exists()


# The runtime helper -----------------------------------------------------------------------------------

#: What a user's container need not have: the runtime and the example run with these unimportable.
BLOCKED = ("pydantic", "pydantic_settings", "celery", "redis", "minio", "fastapi", "httpx", "shared")
LAUNCH = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # import raises ImportError
sys.argv = ["train.py", *{args!r}]
try:
    runpy.run_path("train.py", run_name="__main__")
finally:
    print("loaded:", sorted(m for m in {blocked!r} if sys.modules.get(m) is not None), flush=True)
"""


def test_example_reports_through_the_logger_in_a_bare_interpreter(tmp_path: Path) -> None:
    for name in ("data", "output", "checkpoints"):
        (tmp_path / name).mkdir()
    (tmp_path / "data" / "table.csv").write_bytes(DIGITS.read_bytes())
    (tmp_path / "spec.json").write_text("{}")
    contract = {
        "TRAINFARM_JOB_ID": "5",
        "TRAINFARM_ATTEMPT": "1",
        "TRAINFARM_SPEC_FILE": str(tmp_path / "spec.json"),
        "TRAINFARM_DATA_DIR": str(tmp_path / "data"),
        "TRAINFARM_OUTPUT_DIR": str(tmp_path / "output"),
        "TRAINFARM_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "TRAINFARM_EVENTS_FILE": str(tmp_path / "events.jsonl"),
        "TRAINFARM_DEVICES": "1",
        "TRAINFARM_HYPERPARAMETERS": json.dumps({"target": "digit", "hidden": 32}),
    }
    code = LAUNCH.format(blocked=BLOCKED, args=["--epochs", "2"])
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=EXAMPLE,
        env=child_environment(contract),
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "loaded: []" in run.stdout

    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    metrics = [e for e in events if e["kind"] == "metrics"]
    # The logger reports what the model logged, once per epoch each: validation, then training.
    assert [(e["epoch"], sorted(e["metrics"])) for e in metrics] == [
        (1, ["val_acc", "val_loss"]),
        (1, ["train_loss"]),
        (2, ["val_acc", "val_loss"]),
        (2, ["train_loss"]),
    ]
    assert metrics[2]["metrics"]["val_acc"] > 0.5
    assert [e["epoch"] for e in events if e["kind"] == "progress"] == [1, 2]
    hparams = json.loads((tmp_path / "output" / "hparams.json").read_text())
    assert hparams == {"n_features": 64, "n_classes": 10, "hidden": 32, "lr": 0.003}
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "output" / "model.pt").is_file()


# End to end ---------------------------------------------------------------------------------------------


@SQLITE
def test_submit_example_project_through_a_worker(api: httpx.Client, master, worker) -> None:
    upload_dataset(api, DIGITS)
    result = cli(
        master, "submit", str(EXAMPLE), "-d", "digits.csv", "--queue", "cpu", "--hp", "target=digit",
        "--retries", "0", "-f", "--", "python", "train.py", "--epochs", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"packing {EXAMPLE}: 3 files" in result.stderr and "uploaded bundle" in result.stderr
    job = wait_status(api, 1, {"succeeded"}, timeout=30)

    logs = "\n".join(log_texts(api, 1))
    assert f"code bundle {job['spec']['code'][:12]}: 3 files" in logs
    assert "epoch 2/2 " in logs
    artifacts = {a["name"] for a in api.get("/jobs/1/artifacts").json()}
    assert {"model.pt", "hparams.json", "metrics.json"} <= artifacts
    history = api.get("/jobs/1/metrics").json()
    assert {"train_loss", "val_acc"} <= {
        name for row in history if row["kind"] == "metrics" for name in row["values"]
    }
    assert job["metrics"]["val_acc"] > 0.5
