"""`pip install .` gives a working worker and master: the wheel holds every package and the
dashboard, and `celery -A worker` finds the app from any directory."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
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


# The Windows worker's conda environment ----------------------------------------------------------

#: The modules a worker node runs: the worker, the shared code and the CLI's client side.
WORKER_NODE_CODE = ("worker", "shared", "trainfarm/cli*.py", "trainfarm/client.py", "trainfarm/render.py")
REQUIREMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def worker_environment() -> tuple[list[str], list[str]]:
    """(conda packages, pip lines) of environment.worker.yml, read by a parser that knows just the
    shape of that file, so the check needs no PyYAML; where PyYAML is installed it must agree."""
    text = (ROOT / "environment.worker.yml").read_text()
    conda: list[str] = []
    pip: list[str] = []
    section, in_pip = "", False
    for raw in text.splitlines():
        line = "" if raw.lstrip().startswith("#") else raw.split(" #")[0].rstrip()
        if not line:
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            section = line
            continue
        if section != "dependencies:":
            continue
        assert line.lstrip().startswith("- "), raw
        item = line.strip()[2:]
        if indent == 2:
            in_pip = item == "pip:"
            if not in_pip:
                conda.append(item)
        else:
            assert in_pip and indent == 6, f"unexpected line in environment.worker.yml: {raw!r}"
            pip.append(item)
    try:
        import yaml
    except ImportError:
        return conda, pip
    deps = yaml.safe_load(text)["dependencies"]
    assert [d for d in deps if isinstance(d, str)] == conda
    assert [d["pip"] for d in deps if isinstance(d, dict)] == [pip]
    return conda, pip


def pins(lines: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (extras, version) of `name[extras]==version` lines; every one must be pinned."""
    pinned = {}
    for line in lines:
        match = REQUIREMENT.fullmatch(line.strip())
        assert match and match[3].startswith("==") and "," not in match[3], f"not pinned: {line!r}"
        pinned[canonical(match[1])] = (match[2] or "", match[3][2:].strip())
    return pinned


def test_worker_environment_pins_match_requirements():
    conda, pip = worker_environment()
    assert "python=3.11" in conda and "pip" in conda
    options = [line for line in pip if line.startswith("-")]
    assert any(o.startswith("--extra-index-url https://download.pytorch.org/whl/cu") for o in options)
    env = pins([line for line in pip if not line.startswith("-")])
    requirements = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    required = pins(requirements)
    assert env.keys() <= required.keys(), f"not in requirements.txt: {env.keys() - required.keys()}"
    assert {name: required[name] for name in env} == env
    assert env["torch"] == ("", "2.13.0") and "pytorch-lightning" in env


def test_worker_environment_provides_every_import_of_the_worker():
    """Each third-party module the node's code imports comes with a package of the environment,
    directly or as a dependency (as installed here)."""
    _conda, pip = worker_environment()
    wanted = [REQUIREMENT.fullmatch(line.strip()) for line in pip if not line.startswith("-")]
    provided: set[str] = set()
    todo = [(m[1], {e.strip() for e in (m[2] or "").split(",") if e.strip()}) for m in wanted if m]
    while todo:
        name, extras = todo.pop()
        if canonical(name) in provided and not extras:
            continue
        provided.add(canonical(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a dependency of another platform; its own imports are not checked here
        for requirement in requires:
            spec, _, marker = requirement.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            match = REQUIREMENT.match(spec.strip())
            if match and (extra is None or extra[1] in extras):
                todo.append((match[1], {e.strip() for e in (match[2] or "").split(",") if e.strip()}))

    distributions = metadata.packages_distributions()
    local = {"worker", "shared", "trainfarm", "master", "tests"}
    missing = {}
    files = [
        file
        for pattern in WORKER_NODE_CODE
        for file in ((ROOT / pattern).rglob("*.py") if (ROOT / pattern).is_dir() else ROOT.glob(pattern))
    ]
    assert len(files) > 30
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for module in (m.split(".")[0] for m in modules):
                if module in sys.stdlib_module_names or module in local or module == "__future__":
                    continue
                owners = {canonical(d) for d in distributions.get(module, [])}
                if not owners & provided:
                    missing[module] = f"{file.relative_to(ROOT)} (from {owners or 'nothing installed'})"
    assert not missing, f"imported, not in environment.worker.yml: {missing}"
