"""The environment a process-backend job starts with: an allow-list of the worker's variables, never
its secrets, then the contract, the GPUs and the spec's own `env`.

A worker's environment holds what a job must not see (TRAINFARM_S3_SECRET_KEY, TRAINFARM_REDIS_URL
with its password, DOCKER_HOST, cloud credentials), so a job gets only what a process needs to start
and find its libraries; an operator names more with TRAINFARM_JOB_ENV_PASSTHROUGH.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from shared.settings import PROJECT_ROOT

#: What any process needs: its search path, who and where it is, locale and time zone, temp files,
#: the terminal; CUDA's libraries (LD_LIBRARY_PATH) and the environment the worker's Python is in.
ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "TERM",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
    }
)
#: Prefixes of allowed names: locale categories, CUDA and the NVIDIA driver's settings, conda's
#: activation (CONDA_PREFIX, CONDA_EXE, CONDA_DEFAULT_ENV, ...).
ALLOWED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "CONDA_")
#: What a Windows process needs to start at all (SYSTEMROOT: Python's sockets and random numbers;
#: COMSPEC and PATHEXT: a shell and what it runs), and where torch, numpy and MKL look for the
#: user's folders and the machine's processors.
ALLOWED_WINDOWS = frozenset(
    {
        "SYSTEMROOT",
        "SYSTEMDRIVE",
        "WINDIR",
        "COMSPEC",
        "PATHEXT",
        "OS",
        "USERNAME",
        "USERDOMAIN",
        "USERPROFILE",
        "HOMEDRIVE",
        "HOMEPATH",
        "APPDATA",
        "LOCALAPPDATA",
        "PROGRAMDATA",
        "ALLUSERSPROFILE",
        "PUBLIC",
        "PROGRAMFILES",
        "PROGRAMFILES(X86)",
        "PROGRAMW6432",
        "COMMONPROGRAMFILES",
        "COMMONPROGRAMFILES(X86)",
        "COMMONPROGRAMW6432",
        "COMPUTERNAME",
        "NUMBER_OF_PROCESSORS",
        "PROCESSOR_ARCHITECTURE",
        "PROCESSOR_IDENTIFIER",
        "PROCESSOR_LEVEL",
        "PROCESSOR_REVISION",
        "DRIVERDATA",
    }
)
#: The farm's own settings and secrets: never passed on, whatever the pass-through says. The
#: contract variables (worker/jobenv.py) are set afresh for each attempt.
NEVER_PREFIX = "TRAINFARM_"


def passes(name: str, passthrough: Iterable[str] = (), windows: bool = os.name == "nt") -> bool:
    """Whether the worker's variable `name` reaches a job: allow-listed, or named in `passthrough`
    (exact names, or prefixes ending in `*`), and not TRAINFARM_*."""
    if windows:  # Windows names are case-insensitive; os.environ spells them in upper case there
        name = name.upper()
        passthrough = [p.upper() for p in passthrough]
    if name.startswith(NEVER_PREFIX):
        return False
    if name in ALLOWED or name.startswith(ALLOWED_PREFIXES) or (windows and name in ALLOWED_WINDOWS):
        return True
    for entry in passthrough:
        if entry.endswith("*") and name.startswith(entry[:-1]):
            return True
        if name == entry:
            return True
    return False


def inherited(environ: Mapping[str, str], passthrough: Iterable[str] = ()) -> dict[str, str]:
    """The worker's variables a job gets."""
    allowed = list(passthrough)
    return {k: v for k, v in environ.items() if passes(k, allowed)}


def job_base_environment(
    contract: Mapping[str, str], passthrough: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allow-listed part of the worker's environment (`environ`, default ours), the `contract`
    variables on top, this checkout importable (recipes import worker.*) and output unbuffered."""
    env = inherited(os.environ if environ is None else environ, passthrough)
    env.update(contract)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env
