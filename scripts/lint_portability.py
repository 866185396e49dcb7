#!/usr/bin/env python3
"""Portability lint: POSIX-only calls and imports must sit behind a platform guard, so that workers,
the shared code and the CLI keep running on Windows.

    python scripts/lint_portability.py worker shared trainfarm

Code counts as guarded when it is, lexically,
- in a branch (`if`, `elif`, `else`, `x if c else y`) of a test that mentions `os.name`, `sys.platform`,
  `platform.system()`, `hasattr(<module>, ...)`, `TYPE_CHECKING`, or a module-level name assigned
  from one of those (`IS_WINDOWS = os.name == "nt"`);
- after such a test in an `and`/`or` (`sys.platform == "win32" or os.geteuid() != 0`);
- after `if <such a test>: ... return` (or raise, continue, break) in the same block;
- in a function whose name starts with `_posix_` or `_linux_`;
- in a `try` block that catches ImportError (the import fails on Windows before the code runs).
Which side of a test a branch is does not matter, and calls are not followed into functions: the
lint keeps POSIX-only code visibly fenced, it does not prove it unreachable. Windows-only calls are
not its concern.

Modules that only run on Linux and macOS are listed in POSIX_ONLY_PATHS; only their import-time code
(everything outside function bodies) is checked, because the CLI imports them on Windows too.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATHS = ("worker", "shared", "trainfarm")
#: The standalone farm and the services it starts (redis-server, SeaweedFS, PostgreSQL for the tests)
#: run on Linux and macOS only. The CLI, its client and everything a worker runs are checked in full.
POSIX_ONLY_PATHS = (
    # Its functions run only once `job_user` has checked os.name (a job user is POSIX-only).
    "worker/job_user.py",
    "trainfarm/services/",
    "trainfarm/standalone.py",
    "trainfarm/supervisor.py",
    "trainfarm/demo.py",
)

#: Modules that do not exist on Windows.
POSIX_MODULES = frozenset(
    {"fcntl", "pwd", "grp", "resource", "termios", "tty", "pty", "posix", "syslog", "crypt", "spwd", "nis"}
    | {"curses", "readline"}
)
_OS = """
    fork forkpty register_at_fork killpg getpgid setpgid getpgrp setpgrp setsid getsid
    getuid geteuid getgid getegid getgroups getresuid getresgid setuid seteuid setgid setegid
    setgroups setreuid setregid initgroups chown lchown fchown chroot mkfifo mknod makedev major
    minor wait3 wait4 WNOHANG WUNTRACED WIFSTOPPED WCOREDUMP getloadavg nice getpriority
    setpriority sync uname openpty ttyname ctermid pipe2 posix_spawn posix_spawnp posix_fadvise
    posix_fallocate sched_setaffinity sched_getaffinity statvfs fstatvfs sendfile pread pwrite
    lockf fchdir sysconf pathconf fpathconf confstr O_NONBLOCK O_CLOEXEC O_NOCTTY
"""
_SIGNAL = """
    SIGKILL SIGHUP SIGUSR1 SIGUSR2 SIGCHLD SIGALRM SIGQUIT SIGSTOP SIGCONT SIGTSTP SIGPIPE
    SIGWINCH SIGTTIN SIGTTOU SIGPROF SIGVTALRM SIGXCPU SIGXFSZ SIGIO SIGURG SIGSYS SIGTRAP SIGBUS
    SIGPOLL SIGRTMIN SIGRTMAX alarm pause setitimer getitimer siginterrupt sigwait sigwaitinfo
    sigtimedwait sigpending pthread_kill pthread_sigmask SIG_BLOCK SIG_UNBLOCK SIG_SETMASK
    ITIMER_REAL ITIMER_VIRTUAL ITIMER_PROF
"""
#: What Windows lacks, by the name it is imported under.
POSIX_NAMES = frozenset(
    [f"os.{name}" for name in _OS.split()]
    + [f"signal.{name}" for name in _SIGNAL.split()]
    + ["shutil.chown", "time.tzset", "select.poll", "select.epoll", "select.kqueue"]
)
#: Methods that raise NotImplementedError on Windows, whatever object they are called on.
POSIX_METHODS = frozenset({"add_signal_handler", "remove_signal_handler"})
#: Keyword arguments that mean nothing, or raise, on Windows, whatever is called.
POSIX_KEYWORDS = frozenset({"preexec_fn", "start_new_session"})
#: Keyword arguments of subprocess calls that Windows refuses.
POSIX_SUBPROCESS_KEYWORDS = frozenset({"pass_fds", "process_group", "user", "group", "extra_groups"})
SUBPROCESS_CALLS = frozenset(
    f"subprocess.{name}" for name in ("Popen", "run", "call", "check_call", "check_output")
) | {"asyncio.create_subprocess_exec", "asyncio.create_subprocess_shell"}
#: What a platform test reads.
PLATFORM_NAMES = frozenset(
    {
        "os.name",
        "sys.platform",
        "platform.system",
        "platform.platform",
        "platform.uname",
        "typing.TYPE_CHECKING",
    }
)
GUARDED_FUNCTION_PREFIXES = ("_posix_", "_linux_")
IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError"})


@dataclass(frozen=True, order=True)
class Violation:
    path: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col + 1}: {self.message}"


class _Checker(ast.NodeVisitor):
    def __init__(self, tree: ast.Module, path: str, import_time_only: bool) -> None:
        self.path = path
        self._import_time_only = import_time_only
        self.violations: list[Violation] = []
        self._guards = 0
        self._aliases = _aliases(tree)
        self._flags: set[str] = set()
        for stmt in tree.body:  # module-level `IS_WINDOWS = sys.platform == "win32"` and the like
            value = stmt.value if isinstance(stmt, ast.Assign | ast.AnnAssign) else None
            if value is not None and self._mentions_platform(value):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                self._flags.update(t.id for t in targets if isinstance(t, ast.Name))

    # What names mean -------------------------------------------------------------------------------

    def _qualified(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for: "os.killpg" for `os.killpg`, for `o.killpg` after
        `import os as o` and for `killpg` after `from os import killpg`; None unless it starts at an
        imported name."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in self._aliases:
            return None
        return ".".join([self._aliases[node.id], *reversed(parts)])

    def _mentions_platform(self, test: ast.expr) -> bool:
        for node in ast.walk(test):
            if isinstance(node, ast.Name) and (node.id in self._flags or node.id == "TYPE_CHECKING"):
                return True
            if isinstance(node, ast.Name | ast.Attribute) and self._qualified(node) in PLATFORM_NAMES:
                return True
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "hasattr"
                and node.args
                and self._qualified(node.args[0]) is not None
            ):
                return True  # a feature test: hasattr(os, "killpg")
        return False

    # Guards ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guarded(self, guarded: bool = True) -> Iterator[None]:
        self._guards += guarded
        try:
            yield
        finally:
            self._guards -= guarded

    def generic_visit(self, node: ast.AST) -> None:
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                self._block(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def _block(self, stmts: Sequence[ast.stmt]) -> None:
        """A statement list; after `if <platform test>: ... return` the rest of it is guarded."""
        with contextlib.ExitStack() as rest:
            for stmt in stmts:
                self.visit(stmt)
                if (
                    isinstance(stmt, ast.If)
                    and not stmt.orelse
                    and isinstance(stmt.body[-1], ast.Return | ast.Raise | ast.Continue | ast.Break)
                    and self._mentions_platform(stmt.test)
                ):
                    rest.enter_context(self._guarded())

    def visit_If(self, node: ast.If) -> None:
        self.visit(node.test)
        with self._guarded(self._mentions_platform(node.test)):
            self._block(node.body)
            self._block(node.orelse)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self.visit(node.test)
        with self._guarded(self._mentions_platform(node.test)):
            self.visit(node.body)
            self.visit(node.orelse)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        with contextlib.ExitStack() as rest:
            for value in node.values:
                self.visit(value)
                if self._mentions_platform(value):
                    rest.enter_context(self._guarded())

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        with self._guarded(node.name.startswith(GUARDED_FUNCTION_PREFIXES)):
            if not self._import_time_only:
                self.generic_visit(node)
                return
            for part in [*node.decorator_list, node.args, node.returns]:  # what runs at import
                if part is not None:
                    self.visit(part)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Try(self, node: ast.Try) -> None:
        caught: set[str] = set()
        for handler in node.handlers:
            for name in ast.walk(handler.type) if handler.type is not None else ():
                if isinstance(name, ast.Name):
                    caught.add(name.id)
        with self._guarded(bool(caught & IMPORT_ERRORS)):
            self._block(node.body)
            self._block(node.orelse)
        for handler in node.handlers:
            self.visit(handler)
        self._block(node.finalbody)

    visit_TryStar = visit_Try

    # What is refused ---------------------------------------------------------------------------------

    def _report(self, node: ast.AST, what: str) -> None:
        if self._guards == 0:
            message = f"{what} is POSIX-only; put it behind an os.name / sys.platform test"
            self.violations.append(Violation(self.path, node.lineno, node.col_offset, message))  # type: ignore[attr-defined]

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] in POSIX_MODULES:
                self._report(node, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            return
        if node.module.split(".")[0] in POSIX_MODULES:
            self._report(node, f"from {node.module} import")
        for alias in node.names:
            if f"{node.module}.{alias.name}" in POSIX_NAMES:
                self._report(node, f"{node.module}.{alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._qualified(node)
        if name is not None and name.startswith("signal.Signals."):
            name = "signal." + name.removeprefix("signal.Signals.")
        if name in POSIX_NAMES:
            self._report(node, name)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        callee = self._qualified(node.func)
        for keyword in node.keywords:
            if keyword.arg in POSIX_KEYWORDS or (
                keyword.arg in POSIX_SUBPROCESS_KEYWORDS and callee in SUBPROCESS_CALLS
            ):
                self._report(keyword, f"{keyword.arg}=")
        if callee == "os.kill" and len(node.args) == 2 and _constant(node.args[1]) == 0:
            self._report(node, "os.kill(pid, 0) (on Windows it sends Ctrl-C)")
        method = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if method in POSIX_METHODS:
            self._report(node, f".{method}()")
        start_method = _constant(node.args[0]) if node.args else None
        if method in ("set_start_method", "get_context") and start_method in ("fork", "forkserver"):
            self._report(node, f"the {start_method!r} start method")
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # kwargs["preexec_fn"] = ...: the same keyword, passed on later with **kwargs.
        if _constant(node.slice) in POSIX_KEYWORDS:
            self._report(node, f"{_constant(node.slice)}=")
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key in node.keys:
            if key is not None and _constant(key) in POSIX_KEYWORDS:
                self._report(key, f"{_constant(key)}=")
        self.generic_visit(node)


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> what it was imported as, from every import of the module (functions' included)."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _constant(node: ast.expr) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def check_source(source: str, path: str = "<string>", import_time_only: bool = False) -> list[Violation]:
    """POSIX-only uses outside guards; with `import_time_only`, function bodies are not looked at."""
    tree = ast.parse(source, filename=path)
    checker = _Checker(tree, path, import_time_only)
    checker.visit(tree)
    return sorted(checker.violations)


def python_files(paths: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """The .py files under `paths`, each with whether it is declared POSIX-only."""
    for path in paths:
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            try:
                relative = file.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                relative = ""  # outside the project: nothing of it is declared POSIX-only
            yield file, relative.startswith(POSIX_ONLY_PATHS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help=f"files or folders (default: {DEFAULT_PATHS})")
    args = parser.parse_args(argv)
    files = list(python_files(args.paths or [ROOT / p for p in DEFAULT_PATHS]))
    violations = []
    for file, posix_only in files:
        violations += check_source(file.read_text(encoding="utf-8"), str(file), posix_only)
    for violation in violations:
        print(violation)
    if violations:
        print(f"portability: {len(violations)} POSIX-only uses outside guards", file=sys.stderr)
        return 1
    print(f"portability: {len(files)} files checked, no POSIX-only code outside guards", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
