"""What keeps workers running on Windows: a file lock that works on both systems and is freed when its
holder dies, and the lint that keeps POSIX-only calls behind platform guards."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from worker.filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

# A portable file lock ---------------------------------------------------------------------------

#: Takes the lock named by argv[1], says whether it got it, releases it on the first line of stdin
#: and exits on the second.
HOLDER = textwrap.dedent(
    """
    import sys
    from worker.filelock import FileLock
    lock = FileLock(sys.argv[1])
    print("acquired" if lock.try_acquire() else "busy", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
    sys.stdin.readline()
    """
)


def holder(path: Path) -> tuple[subprocess.Popen[str], str]:
    """Another process trying the lock, and what it got."""
    proc = subprocess.Popen(
        [PY, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def tell(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def test_two_processes_contend_for_a_file_lock(tmp_path):
    path = tmp_path / "gpu-0.lock"
    first, got = holder(path)
    try:
        assert got == "acquired"
        mine = FileLock(path)
        assert not mine.try_acquire()
        assert tell(first) == "released"
        assert mine.try_acquire()
        second, got = holder(path)  # now the other way round
        assert got == "busy"
        second.kill()
        mine.release()
        third, got = holder(path)
        assert got == "acquired"
        third.kill()
    finally:
        first.kill()


def test_file_lock_is_freed_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "gpu-0.lock"
    proc, got = holder(path)
    assert got == "acquired"
    assert not FileLock(path).try_acquire()
    proc.kill()  # SIGKILL on POSIX, TerminateProcess on Windows: no chance to release
    proc.wait(timeout=10)
    assert FileLock(path).try_acquire()


def test_file_lock_excludes_other_holders_in_the_same_process(tmp_path):
    # The threads pool runs several attempts in one process: their GPU locks must exclude each other.
    path = tmp_path / "gpu-0.lock"
    with FileLock(path) as lock:
        assert lock.held
        other = FileLock(path)
        assert not other.try_acquire()
        assert not lock.try_acquire()  # not re-entrant either
        with pytest.raises(BlockingIOError):
            other.__enter__()
    assert not lock.held
    assert other.try_acquire()
    other.release()
    other.release()  # a second release is harmless


# The portability lint ---------------------------------------------------------------------------


def load_lint():
    spec = importlib.util.spec_from_file_location(
        "lint_portability", ROOT / "scripts" / "lint_portability.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


#: Every line marked BAD must be reported, and no other.
SAMPLE = textwrap.dedent(
    """
    import asyncio
    import multiprocessing
    import os
    import platform
    import shutil
    import signal
    import subprocess
    import sys
    import fcntl  # BAD
    import os as system
    from os import killpg  # BAD
    from signal import SIGTERM
    from typing import TYPE_CHECKING

    IS_WINDOWS = sys.platform == "win32"

    try:
        import pwd
    except ImportError:
        pwd = None

    if TYPE_CHECKING:
        import resource


    def unguarded(pid, f, docker):
        os.killpg(pid, signal.SIGTERM)  # BAD
        os.kill(pid, signal.SIGKILL)  # BAD
        system.setsid()  # BAD
        signal.alarm(3)  # BAD
        print(signal.Signals.SIGHUP)  # BAD
        os.kill(pid, 0)  # BAD
        subprocess.Popen(["x"], start_new_session=True)  # BAD
        subprocess.run(["x"], preexec_fn=f)  # BAD
        subprocess.run(["x"], user="nobody")  # BAD
        kwargs = {"start_new_session": True}  # BAD
        kwargs["preexec_fn"] = f  # BAD
        multiprocessing.set_start_method("fork")  # BAD
        multiprocessing.get_context("spawn")
        shutil.chown("/tmp/x", "nobody")  # BAD
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, f)  # BAD
        docker.containers.run("image", user="1000:1000")
        os.kill(pid, signal.SIGTERM)
        signal.signal(signal.SIGTERM, f)


    def guarded(pid):
        if os.name == "posix":
            os.killpg(pid, signal.SIGKILL)
        else:
            subprocess.Popen(["x"], creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
        if sys.platform.startswith("linux"):
            signal.setitimer(signal.ITIMER_REAL, 1)
        elif os.name == "nt":
            pass
        else:
            os.getuid()
        sig = signal.SIGKILL if os.name == "posix" else signal.SIGTERM
        if sys.platform == "win32" or os.geteuid() != 0:
            print(sig)
        if hasattr(os, "fork"):
            os.fork()
        if IS_WINDOWS:
            return
        os.setpgrp()


    def early_exit():
        if platform.system() == "Windows":
            return None
        return os.getuid()


    def no_early_exit():
        if os.name == "nt":
            print("on Windows")
        return os.getuid()  # BAD


    def _posix_stop(pid):
        os.killpg(pid, signal.SIGKILL)


    def _linux_notify():
        def inner():
            return signal.SIGUSR1
        return inner


    class Holder:
        def method(self):
            if os.name == "posix":
                import fcntl
            return os.getpgid(0)  # BAD
    """
)


def test_lint_reports_unguarded_posix_calls_and_accepts_guarded_ones():
    lint = load_lint()
    lines = SAMPLE.splitlines()
    bad = {number for number, text in enumerate(lines, 1) if text.endswith("# BAD")}
    found = lint.check_source(SAMPLE, "sample.py")
    assert {v.line for v in found} == bad, "\n".join(map(str, found))
    first = found[0]
    assert (
        str(first)
        == f"sample.py:{first.line}:1: import fcntl is POSIX-only; put it behind an os.name / sys.platform test"
    )


def test_lint_checks_only_import_time_code_of_posix_only_modules():
    lint = load_lint()
    source = "import os\nimport fcntl\n\n\ndef stop(pid):\n    os.killpg(pid, 9)\n"
    assert [v.line for v in lint.check_source(source, import_time_only=True)] == [2]
    assert [v.line for v in lint.check_source(source)] == [2, 6]
    # The list of POSIX-only modules names real files: a rename must not widen it silently.
    for path in lint.POSIX_ONLY_PATHS:
        assert (ROOT / path).exists(), path


def test_lint_command_fails_on_violations(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    done = subprocess.run(
        [PY, "scripts/lint_portability.py", str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    bad = sum(line.endswith("# BAD") for line in SAMPLE.splitlines())
    assert done.returncode == 1
    assert done.stdout.count(f"{sample}:") == bad
    assert done.stderr.strip() == f"portability: {bad} POSIX-only uses outside guards"


def test_project_packages_pass_the_portability_lint():
    done = subprocess.run(
        [PY, "scripts/lint_portability.py", "worker", "shared", "trainfarm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no POSIX-only code outside guards" in done.stderr
