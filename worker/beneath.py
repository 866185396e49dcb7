"""Opening a job's file without following a link the job may have put in its place.

The worker uploads what a job left in its output and checkpoint folders, and the worker may be
root while the job is not (TRAINFARM_JOB_USER). Checking that a path is no link and then opening it
leaves a moment in which the running job could swap the file, or a folder above it, for a link to
the worker's own files; so each step below the job's folder is opened relative to the last with
O_NOFOLLOW, and the result must be a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

#: Where the platform cannot open relative to a folder (Windows), a plain open: the job user
#: switch, the reason for all this, is POSIX only.
_CAN_WALK = os.open in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")


def open_beneath(root: Path, path: Path) -> BinaryIO:
    """`path` (inside `root`) opened for reading; OSError if any part of it below `root` is a link
    or it is not a regular file."""
    if not _CAN_WALK:
        return open(path, "rb")
    parts = path.relative_to(root).parts
    folder_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    # The folder itself too: a container job owns its attempt's folder, so it can swap `output/`
    # for a link to anywhere on the node.
    fd = os.open(root, folder_flags)
    try:
        for part in parts[:-1]:
            inner = os.open(part, folder_flags, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):  # a FIFO would block the upload forever
        os.close(file_fd)
        raise OSError(f"{path} is not a regular file")
    os.set_blocking(file_fd, True)
    return os.fdopen(file_fd, "rb")
