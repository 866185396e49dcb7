"""Code bundles: a project directory packed into a deterministic `.tar.gz` named by its SHA-256.

The same tree always gives the same bytes (sorted entries, times and owners zeroed, no gzip timestamp),
so an unchanged project has the same digest and is uploaded once. What is left out, and why, is kept
so the CLI can show it: a stray dataset or virtualenv in a bundle is the usual mistake.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import TrainfarmError
from trainfarm.render import format_size

MiB = 1024 * 1024
DEFAULT_MAX_FILE_SIZE = 20 * MiB
DEFAULT_MAX_TOTAL_SIZE = 200 * MiB
#: Glob patterns, one a line, of more paths to leave out; read from the project's root.
IGNORE_FILE = ".trainfarmignore"

#: Folders that are never code, by name, with the reason shown in the listing.
IGNORED_DIRS = {
    ".git": "version control",
    ".hg": "version control",
    ".svn": "version control",
    "__pycache__": "cache",
    ".mypy_cache": "cache",
    ".pytest_cache": "cache",
    ".ruff_cache": "cache",
    ".ipynb_checkpoints": "cache",
    "node_modules": "node modules",
}
IGNORED_FILES = {".DS_Store": "macOS metadata"}
IGNORED_SUFFIXES = {".pyc": "compiled Python"}


class BundleError(TrainfarmError):
    """The directory cannot be packed as it is (too big, unreadable, not a directory)."""


@dataclass(frozen=True)
class Entry:
    path: Path
    arcname: str
    size: int
    is_dir: bool = False
    executable: bool = False


@dataclass(frozen=True)
class Skipped:
    arcname: str
    reason: str


@dataclass(frozen=True)
class Archive:
    path: Path
    sha256: str
    size: int


@dataclass
class Plan:
    """What packing `root` takes: the entries in archive order and what was left out."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_dir]

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files)

    def write(self, dest: Path) -> Archive:
        """Write the archive to `dest`; its SHA-256 names the bundle."""
        try:
            # No file name and mtime 0 in the gzip header: the bytes depend on the content only.
            with (
                dest.open("wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for entry in self.entries:
                    _add(tar, entry)
        except OSError as exc:
            raise BundleError(f"cannot pack {self.root}: {exc}") from None
        digest = hashlib.sha256()
        with dest.open("rb") as fh:
            while chunk := fh.read(MiB):
                digest.update(chunk)
        return Archive(dest, digest.hexdigest(), dest.stat().st_size)


def _add(tar: tarfile.TarFile, entry: Entry) -> None:
    info = tarfile.TarInfo(entry.arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if entry.is_dir:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.size, info.mode = entry.size, 0o755 if entry.executable else 0o644
    with entry.path.open("rb") as fh:
        tar.addfile(info, fh)


@dataclass(frozen=True)
class IgnoreRule:
    """One `.trainfarmignore` line. A pattern without `/` matches a file or folder name anywhere; with
    one, the path from the project root (`*` then also crosses folders). A trailing `/` means folders only."""

    pattern: str
    text: str
    anchored: bool
    dirs_only: bool

    @classmethod
    def parse(cls, line: str) -> IgnoreRule | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        pattern = text.rstrip("/")
        dirs_only = pattern != text
        anchored = "/" in pattern
        return cls(pattern.lstrip("/"), text, anchored, dirs_only)

    def matches(self, arcname: str, is_dir: bool) -> bool:
        if self.dirs_only and not is_dir:
            return False
        subject = arcname if self.anchored else arcname.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(subject, self.pattern)


def read_ignore_file(root: Path) -> list[IgnoreRule]:
    path = root / IGNORE_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [rule for rule in map(IgnoreRule.parse, lines) if rule is not None]


def scan(
    root: Path, max_file_size: int = DEFAULT_MAX_FILE_SIZE, max_total_size: int = DEFAULT_MAX_TOTAL_SIZE
) -> Plan:
    """Decide what of `root` goes into its bundle; refuse (BundleError) when the total is over the limit."""
    if not root.is_dir():
        raise BundleError(f"{root} is not a directory", field="project")
    plan = Plan(root)
    _Walker(root.resolve(), read_ignore_file(root), max_file_size, plan).walk(root, "")
    if not plan.files:
        raise BundleError(f"nothing to pack in {root}: every file was left out", field="project")
    if plan.total_size > max_total_size:
        largest = sorted(plan.files, key=lambda e: e.size, reverse=True)[:5]
        names = ", ".join(f"{e.arcname} ({format_size(e.size)})" for e in largest)
        raise BundleError(
            f"{root} would make a {format_size(plan.total_size)} bundle, over the {format_size(max_total_size)} limit; "
            f"largest files: {names}. Leave data out with {IGNORE_FILE} (upload datasets separately)",
            field="project",
        )
    return plan


@dataclass
class _Walker:
    root: Path
    rules: list[IgnoreRule]
    max_file_size: int
    plan: Plan

    def walk(self, folder: Path, prefix: str) -> None:
        with os.scandir(folder) as it:
            # Sorted by name: the archive's order, and so its digest, must not depend on the file system.
            children = sorted(it, key=lambda d: d.name)
        for child in children:
            arcname = f"{prefix}{child.name}"
            path = Path(child.path)
            try:
                info = path.stat()  # follows links: what would be packed
            except OSError:
                self.plan.skipped.append(
                    Skipped(arcname, "broken symlink" if child.is_symlink() else "unreadable")
                )
                continue
            is_dir = stat.S_ISDIR(info.st_mode)
            reason = self._reason(path, child, arcname, is_dir, info)
            if reason is not None:
                self.plan.skipped.append(Skipped(arcname + ("/" if is_dir else ""), reason))
            elif is_dir:
                self.plan.entries.append(Entry(path, arcname, 0, is_dir=True))
                self.walk(path, arcname + "/")
            else:
                executable = bool(info.st_mode & stat.S_IXUSR)
                self.plan.entries.append(Entry(path, arcname, info.st_size, executable=executable))

    def _reason(
        self, path: Path, child: os.DirEntry, arcname: str, is_dir: bool, info: os.stat_result
    ) -> str | None:
        name = child.name
        if is_dir and name in IGNORED_DIRS:
            return IGNORED_DIRS[name]
        if is_dir and (path / "pyvenv.cfg").is_file():
            return "virtual environment"
        if not is_dir and name in IGNORED_FILES:
            return IGNORED_FILES[name]
        if not is_dir and Path(name).suffix in IGNORED_SUFFIXES:
            return IGNORED_SUFFIXES[Path(name).suffix]
        for rule in self.rules:
            if rule.matches(arcname, is_dir):
                return f"{IGNORE_FILE}: {rule.text}"
        if child.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(self.root):
                return "symlink outside the project"
            if is_dir:
                # Its content is packed where it lives; following it could also loop.
                return "symlink to a folder"
        if not is_dir and not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if not is_dir and info.st_size > self.max_file_size:
            return f"{format_size(info.st_size)}, over the {format_size(self.max_file_size)} file size limit"
        if not is_dir and not os.access(path, os.R_OK):
            return "unreadable"
        return None
