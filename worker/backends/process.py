"""The process backend: the job runs as a child process tree, in the worker's own Python
environment or in a named conda/venv environment of the node, with an allow-list of the worker's
environment variables (worker/job_environment.py) and, with TRAINFARM_JOB_USER, as that user
(worker/job_user.py)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from shared.errors import FinalError
from shared.settings import Settings
from worker import job_user, process
from worker.backends.base import Backend, Execution, Launch
from worker.environments import activation, find_environment, first_on_path, interpreter
from worker.job_environment import job_base_environment
from worker.jobenv import job_environment
from worker.loglines import read_lines

#: Bytes read from the job's output pipe at a time, at most.
PIPE_BUFFER = 1024 * 1024


class ProcessExecution(Execution):
    def __init__(self, proc: subprocess.Popen[bytes], grace: float, max_line: int) -> None:
        self._proc = proc
        self._grace = grace
        #: Longest line kept whole, in bytes; a longer one is cut as it is read (worker/loglines.py).
        self._max_line = max_line

    @property
    def pid(self) -> int:
        """The job's root process on this node (the usage sampler reads its tree)."""
        return self._proc.pid

    def output(self) -> Iterator[bytes]:
        assert self._proc.stdout is not None
        with self._proc.stdout:
            # A 1 MiB buffer over the pipe, not Popen's 8 KiB: a flood of long lines costs a third
            # less CPU (fewer reads), and a read still returns what the pipe holds, so no delay.
            pipe = io.BufferedReader(self._proc.stdout.raw, buffer_size=PIPE_BUFFER)  # type: ignore[attr-defined]
            yield from read_lines(pipe.readline, self._max_line)

    def poll(self) -> int | None:
        return self._proc.poll()

    def stop(self, grace: float) -> None:
        process.stop_tree(self._proc, grace)

    def wait(self) -> int:
        return self._proc.wait()

    def close(self) -> None:
        if self._proc.poll() is None:
            process.stop_tree(self._proc, self._grace)
            self._proc.wait()


class ProcessBackend(Backend):
    name = "process"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        job_user.check_at_start(settings)

    def start(self, launch: Launch) -> ProcessExecution:
        spec = launch.message.spec
        user = job_user.job_user(self._settings)
        contract = job_environment(launch.message, launch.dirs)
        env = job_base_environment(contract, self._settings.job_env_passthrough)
        if user is not None:
            job_user.prepare(launch.dirs, user)
            env.update(HOME=str(launch.dirs.home), USER=user.name, LOGNAME=user.name)
        if spec.environment is not None:
            env_dir = find_environment(
                spec.environment, self._settings.environment_dirs, self._settings.node_name
            )
            env = activation(env_dir, env)
            python = interpreter(env_dir)
        else:
            # The worker's interpreter, also where a systemd unit or a service never activated its venv.
            python = Path(sys.executable)
            env["PATH"] = first_on_path([python.parent], env)
        env.update(gpu_environment(launch.gpus))
        env.update(spec.env)  # last: the spec's own; shared/schemas.py refuses the names set above
        argv = self._resolve(launch.argv, python, env["PATH"], launch.workdir)
        try:
            started = process.start(argv, launch.workdir, env, None if user is None else (user.uid, user.gid))
        except OSError as exc:  # not executable, no interpreter for its #! line: the job's to fix
            raise FinalError(
                f"cannot run '{launch.argv[0]}': {exc.strerror or exc}", field="command"
            ) from exc
        return ProcessExecution(
            started, self._settings.cancel_grace_period, self._settings.log_line_max_bytes
        )

    def _resolve(self, argv: list[str], python: Path | None, path: str, workdir: Path) -> list[str]:
        """The executable looked up on the job's PATH, not the worker's: Windows resolves a bare
        name against the parent's PATH, and a missing program is the job's fault, not the node's.
        A name with a folder in it (`./train.sh`, `bin/run`) is the job's own, in its working dir."""
        if argv[0] == "python" and python is not None:
            return [str(python), *argv[1:]]
        if os.path.dirname(argv[0]) and not os.path.isabs(argv[0]):
            own = workdir / argv[0]
            if not own.is_file():
                raise FinalError(f"command '{argv[0]}' not found in the job's code", field="command")
            return [str(own), *argv[1:]]
        found = shutil.which(argv[0], path=path)
        if found is None and not Path(argv[0]).is_file():
            raise FinalError(
                f"command '{argv[0]}' not found on node {self._settings.node_name}", field="command"
            )
        return [found or argv[0], *argv[1:]]


def gpu_environment(gpus: tuple[int, ...]) -> dict[str, str]:
    """Only the assigned GPUs are visible, numbered as NVML and nvidia-smi number them (PCI order,
    not CUDA's default fastest-first), so index 1 in a slot is index 1 in `nvidia-smi`."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
