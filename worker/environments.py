"""Named conda and venv environments a job can ask to run in, found by name on this node."""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import FinalError

#: Where an environment keeps its interpreter: venv on POSIX, venv on Windows, conda on Windows.
_INTERPRETERS = ("bin/python", "Scripts/python.exe", "python.exe")


def interpreter(env_dir: Path) -> Path | None:
    """The Python of a venv or conda environment folder; None when it holds none."""
    for relative in _INTERPRETERS:
        candidate = env_dir / relative
        if candidate.is_file():
            return candidate
    return None


def find_environment(name: str, search_dirs: list[Path], node: str) -> Path:
    """The folder of environment `name`: the first `<dir>/<name>` that holds a Python."""
    for root in search_dirs:
        candidate = root / name
        if interpreter(candidate) is not None:
            return candidate
    where = ", ".join(str(d) for d in search_dirs) or "no folders (set TRAINFARM_ENVIRONMENT_DIRS)"
    raise FinalError(f"environment '{name}' is not on node {node}; looked in {where}", field="environment")


def activation(env_dir: Path, base: dict[str, str]) -> dict[str, str]:
    """What `activate` would change: the environment's executables first on PATH, its prefix named."""
    python = interpreter(env_dir)
    assert python is not None
    bin_dirs = [python.parent]
    if os.name == "nt" and (env_dir / "conda-meta").is_dir():
        # What conda's activate puts first: entry points (torchrun, pip) and DLLs (CUDA, MKL).
        extra = ["Scripts", "Library/mingw-w64/bin", "Library/usr/bin", "Library/bin"]
        bin_dirs += [env_dir / d for d in extra if (env_dir / d).is_dir()]
    marker = "CONDA_PREFIX" if (env_dir / "conda-meta").is_dir() else "VIRTUAL_ENV"
    env = {k: v for k, v in base.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update({"PATH": first_on_path(bin_dirs, base), marker: str(env_dir)})
    return env


def first_on_path(dirs: list[Path], env: dict[str, str]) -> str:
    """`env`'s PATH with `dirs` in front."""
    return os.pathsep.join([*(str(d) for d in dirs), env.get("PATH", "")])
