"""Opening a job's files without following links it may have swapped in (worker/beneath.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from worker.beneath import open_beneath

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="O_NOFOLLOW walk is POSIX only")


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "job" / "sub").mkdir(parents=True)
    (tmp_path / "job" / "sub" / "model.pt").write_bytes(b"weights")
    (tmp_path / "secret.key").write_text("the worker's own")
    return tmp_path / "job"


def test_a_plain_file_below_the_folder_opens(job_dir: Path) -> None:
    with open_beneath(job_dir, job_dir / "sub" / "model.pt") as fh:
        assert fh.read() == b"weights"


@posix_only
def test_a_file_swapped_for_a_link_is_refused(job_dir: Path) -> None:
    target = job_dir / "sub" / "model.pt"
    target.unlink()
    target.symlink_to(job_dir.parent / "secret.key")
    with pytest.raises(OSError):
        open_beneath(job_dir, target)


@posix_only
def test_a_folder_swapped_for_a_link_is_refused(job_dir: Path) -> None:
    (job_dir.parent / "elsewhere").mkdir()
    (job_dir.parent / "elsewhere" / "model.pt").write_text("not the job's")
    os.rename(job_dir / "sub", job_dir / "old")
    (job_dir / "sub").symlink_to(job_dir.parent / "elsewhere")
    with pytest.raises(OSError):
        open_beneath(job_dir, job_dir / "sub" / "model.pt")


@posix_only
def test_a_fifo_is_refused_without_blocking(job_dir: Path) -> None:
    fifo = job_dir / "sub" / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        open_beneath(job_dir, fifo)


@posix_only
def test_the_folder_itself_swapped_for_a_link_is_refused_and_not_listed(job_dir: Path) -> None:
    # A container job owns its attempt's folder: `output/` can become a link to the worker's files.
    from worker.uploads import regular_files

    output = job_dir / "output"
    output.symlink_to(job_dir.parent)
    assert regular_files(output) == []
    with pytest.raises(OSError):
        open_beneath(output, output / "secret.key")
