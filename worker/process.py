"""Starting a training process and stopping its whole tree, on Linux and Windows alike."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


def _die_with_parent() -> None:
    """Linux only: the kernel kills the training process if the worker dies (kill -9, OOM), so
    no orphan keeps training and holding a GPU while the job is retried elsewhere."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def start(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start `argv` in its own process group, stdout and stderr merged into one pipe."""
    kwargs: dict = {}
    if sys.platform == "linux":
        kwargs["preexec_fn"] = _die_with_parent
    if os.name == "posix":
        # A session of its own: the whole tree (DDP ranks, dataloader workers) gets our signals.
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


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
        # Ctrl-Break is the one console signal a process group can receive on Windows.
        proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
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
