"""`pip install .` gives a working worker and master: the wheel holds every package and the
dashboard, and `celery -A worker` finds the app from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_a_worker_that_celery_can_load(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = wheels.glob("trainfarm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "shared/settings.py",
        "master/app.py",
        "master/static/index.html",
        "master/static/app.js",
        "worker/tasks.py",
        "worker/recipes/tabular.py",
        "worker/runtime.py",
        "trainfarm/cli.py",
    ):
        assert expected in names, expected
    assert not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import worker, master.app; worker.app.loader.import_default_modules(); "
        f"print(worker.__file__.startswith({str(target)!r}), worker.app.main, "
        "[t for t in worker.app.tasks if t.startswith('trainfarm')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "trainfarm-worker", "['trainfarm.run_attempt']"]
    report = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "report"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "broker_url" in report.stdout
