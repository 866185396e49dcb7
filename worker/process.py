"""Starting a training process and stopping its whole tree, on Linux and Windows alike."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


@functools.cache
def _libc() -> Any:
    """libc, loaded in the worker: the child runs `_linux_die_with_parent` after it became the job's
    user, who may not be able to read the worker's Python (ctypes) at all."""
    import ctypes

    return ctypes.CDLL("libc.so.6", use_errno=True)


def _linux_die_with_parent() -> None:
    """The kernel kills the training process if the worker dies (kill -9, OOM), so no orphan keeps
    training and holding a GPU while the job is retried elsewhere. (It fires when the *thread* that
    started the process ends: the solo pool's main thread, or a threads-pool thread, which lives as
    long as the worker.) Set after the switch to the job's user, which would clear it."""
    pr_set_pdeathsig = 1
    _libc().prctl(pr_set_pdeathsig, signal.SIGKILL)


@functools.cache
def _windows_kill_on_close_job() -> int | None:
    """Windows' stand-in for PR_SET_PDEATHSIG: a job object that kills its processes when its last
    handle closes. Only this worker holds that handle, and the OS closes it however the worker ends,
    so training processes put in the job die with it. None where the job cannot be made."""
    if sys.platform != "win32":  # also tells the type checker which ctypes this is
        return None
    import ctypes
    from ctypes import wintypes

    class BasicLimits(ctypes.Structure):  # JOBOBJECT_BASIC_LIMIT_INFORMATION
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_int64),
            ("PerJobUserTimeLimit", ctypes.c_int64),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class ExtendedLimits(ctypes.Structure):  # JOBOBJECT_EXTENDED_LIMIT_INFORMATION
        _fields_ = [
            ("BasicLimitInformation", BasicLimits),
            ("IoInfo", ctypes.c_uint64 * 6),  # IO_COUNTERS
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateJobObjectW.argtypes = [wintypes.LPVOID, wintypes.LPCWSTR]
    kernel32.CreateJobObjectW.restype = wintypes.HANDLE
    kernel32.SetInformationJobObject.argtypes = [
        wintypes.HANDLE,
        ctypes.c_int,
        wintypes.LPVOID,
        wintypes.DWORD,
    ]
    kernel32.SetInformationJobObject.restype = wintypes.BOOL
    job_object_extended_limit_information, job_object_limit_kill_on_job_close = 9, 0x2000
    job = kernel32.CreateJobObjectW(None, None)
    limits = ExtendedLimits()
    limits.BasicLimitInformation.LimitFlags = job_object_limit_kill_on_job_close
    if not job or not kernel32.SetInformationJobObject(
        job, job_object_extended_limit_information, ctypes.byref(limits), ctypes.sizeof(limits)
    ):
        log.warning(
            "no kill-on-close job object (error %s): jobs may outlive this worker", ctypes.get_last_error()
        )
        return None
    return job


def _windows_join_job(proc: subprocess.Popen[bytes]) -> None:
    """Put the new process in the worker's kill-on-close job; processes it starts later join too.
    (What it starts in its first milliseconds, before this call, is not covered.)"""
    if sys.platform != "win32":
        return
    import ctypes
    from ctypes import wintypes

    job = _windows_kill_on_close_job()
    if job is None:
        return
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
    kernel32.AssignProcessToJobObject.restype = wintypes.BOOL
    if not kernel32.AssignProcessToJobObject(job, int(proc._handle)):  # type: ignore[attr-defined]
        log.warning("pid %s is not in the worker's job object (error %s)", proc.pid, ctypes.get_last_error())


def start(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str], user: tuple[int, int] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, stdout and stderr merged into one pipe; as `user`
    (uid, gid) when given, with that group alone (none of the worker's supplementary groups)."""
    kwargs: dict = {}
    if user is not None:
        kwargs.update(user=user[0], group=user[1], extra_groups=[])
    if sys.platform == "linux":
        _libc()
        kwargs["preexec_fn"] = _linux_die_with_parent
    if os.name == "posix":
        # A session of its own: the whole tree (DDP ranks, dataloader workers) gets our signals.
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )
    if os.name == "nt":
        _windows_join_job(proc)
    return proc


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Ask the process tree to stop, then kill whatever still runs after `grace` seconds."""
    procs = _tree(proc.pid)
    if os.name == "posix":
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    else:
        # Ctrl-Break is the one console signal a process group can receive on Windows; it needs a
        # console shared with the job (a worker run as a service may have none): kill at once then.
        try:
            proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
        except OSError as exc:
            log.warning("cannot send Ctrl-Break to pid %s (%s): killing its tree", proc.pid, exc)
            grace = 0
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    if os.name == "posix":
        try:
            # Grandchildren that re-parented away from the tree are still in the group.
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
