"""Running jobs as another user (TRAINFARM_JOB_USER), so a job cannot read the worker's files, keys
or /proc/<worker>/environ, nor change the node's dataset cache.

The worker keeps its own files; the attempt's folder is laid out so that the job user may write
only what is the job's (output, checkpoints, code, home, the events file), read its datasets and
spec, and nothing above it but pass through.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.errors import FinalError
from shared.settings import Settings
from worker.jobenv import AttemptDirs

log = logging.getLogger(__name__)

#: Capabilities a non-root worker needs to start a job as another user and own its files for it:
#: CAP_CHOWN (0), CAP_DAC_OVERRIDE (1, to read and delete what the job wrote), CAP_SETGID (6),
#: CAP_SETUID (7).
NEEDED_CAPABILITIES = (0, 1, 6, 7)


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int


def resolve(setting: str) -> JobUser:
    """The user named by TRAINFARM_JOB_USER (a name or a uid) and its primary group."""
    import pwd

    try:
        entry = pwd.getpwuid(int(setting)) if setting.isdigit() else pwd.getpwnam(setting)
    except KeyError:
        if setting.isdigit():  # a uid with no passwd entry (a container's): its group of the same number
            return JobUser(setting, int(setting), int(setting))
        raise FinalError(f"TRAINFARM_JOB_USER={setting}: no such user on this node") from None
    return JobUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def job_user(settings: Settings) -> JobUser | None:
    """The user process-backend jobs run as; None when jobs run as the worker's own user.
    FinalError when one is set but this worker cannot switch to it (fail closed, never run the job
    as the worker's user instead)."""
    if settings.job_user is None:
        return None
    if os.name != "posix":
        raise FinalError("TRAINFARM_JOB_USER is set, but jobs can run as another user only on Linux and Unix")
    user = resolve(settings.job_user)
    if not can_switch_user():
        raise FinalError(
            f"this worker cannot run jobs as TRAINFARM_JOB_USER={settings.job_user}: it is not root and lacks "
            "CAP_SETUID, CAP_SETGID, CAP_CHOWN or CAP_DAC_OVERRIDE; start it as root or unset TRAINFARM_JOB_USER"
        )
    return user


def job_user_ids(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) jobs run as, for a container's `user`; None: unset. A Docker worker needs no
    capability of its own to use it (the engine switches), so this does not check for one."""
    if settings.job_user is None or os.name != "posix":
        return None
    user = resolve(settings.job_user)
    return user.uid, user.gid


def can_switch_user() -> bool:
    if os.geteuid() == 0 and not sys.platform.startswith("linux"):
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() == 0
    effective = next((line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), "0")
    caps = int(effective, 16)
    return all(caps & (1 << cap) for cap in NEEDED_CAPABILITIES)


def check_at_start(settings: Settings) -> None:
    """Say at worker start, not first at a job's end, that TRAINFARM_JOB_USER cannot be honoured."""
    try:
        job_user(settings)
    except FinalError as exc:
        log.error("%s; every process-backend job will fail until this is fixed", exc.message)


def prepare(dirs: AttemptDirs, user: JobUser) -> None:
    """Hand the attempt's writable parts to `user`; the rest stays the worker's, readable.

    The attempt's root, its data folder and the files the worker wrote (spec, log) stay root's: the
    job cannot swap the log for a link or a pipe, nor change a dataset file, which is a hard link
    into the node's cache. Every folder above the attempt must let `user` pass (x), nothing more.
    """
    _check_reachable(dirs.root, user)
    os.chmod(dirs.root.parent, 0o711)  # job-<id>: passable, its attempts not listed
    os.chmod(dirs.root, 0o755)
    os.chmod(dirs.data, 0o755)
    dirs.home.mkdir(exist_ok=True)
    dirs.events.touch()
    for path in (dirs.output, dirs.checkpoints, dirs.code, dirs.home):
        if path.exists():
            chown_tree(path, user.uid, user.gid)
    os.chown(dirs.events, user.uid, user.gid, follow_symlinks=False)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """`root` and everything under it (never through a link) owned by uid:gid."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for folder, subdirs, files in os.walk(root):
        for name in [*subdirs, *files]:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def _check_reachable(root: Path, user: JobUser) -> None:
    """Every folder from / down to the attempt's must grant `user` search (x), or the job cannot
    open its own files; the worker does not widen folders it did not make."""
    root = root.resolve()
    for folder in reversed(root.parents[1:]):  # job-<id> itself the worker made passable
        info = folder.stat()
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            raise FinalError(
                f"TRAINFARM_JOB_USER={user.name} cannot reach the job's folder {root}: {folder} is "
                f"mode {stat.S_IMODE(info.st_mode):04o}; let it pass (chmod o+x, no read) or set "
                "TRAINFARM_WORK_DIR to a folder it can reach"
            )
