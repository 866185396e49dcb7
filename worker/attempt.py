"""Running one attempt of a job: prepare, start the training process, watch it, report, upload."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import urllib3

from shared.errors import FinalError, RetryableError
from shared.schemas import AttemptOutcome, EventKind, TaskMessage
from shared.streams import cancel_key
from worker import process
from worker.context import WorkerContext
from worker.logpump import LogPump
from worker.progress import EventsFileTail
from worker.reporter import AttemptReporter
from worker.uploads import put_file, upload_tree

log = logging.getLogger(__name__)

#: How often the attempt checks its process, cancel flag, timeout and metrics file.
POLL_SECONDS = 0.2
#: The directory that holds `worker/`, `shared/`: children must import them from a checkout too.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPE_MODULES = {"tabular-classifier": "worker.recipes.tabular"}


@dataclass(frozen=True)
class AttemptDirs:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def log(self) -> Path:
        return self.root / "job.log"

    @classmethod
    def create(cls, work_root: Path, job_id: int, attempt: int) -> AttemptDirs:
        dirs = cls(work_root / f"job-{job_id}" / f"attempt-{attempt}")
        shutil.rmtree(dirs.root, ignore_errors=True)  # leftovers of a run of this attempt that died
        for d in (dirs.data, dirs.output, dirs.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return dirs


@dataclass
class Ending:
    outcome: AttemptOutcome
    error: str | None = None
    retryable: bool = False
    exit_code: int | None = None


class AttemptRunner:
    def __init__(self, ctx: WorkerContext, message: TaskMessage) -> None:
        self.ctx = ctx
        self.msg = message
        self.spec = message.spec
        self.reporter = AttemptReporter(ctx.bus, message.job_id, message.attempt, ctx.settings.node_name)

    def run(self) -> Ending:
        job_id, number = self.msg.job_id, self.msg.attempt
        if self._cancel_requested():
            ending = Ending(AttemptOutcome.CANCELLED, "cancelled before it started")
            self._finish(ending, log_key=None, tail=[])
            return ending
        dirs = AttemptDirs.create(self.ctx.settings.job_work_dir, job_id, number)
        pump = LogPump(self.ctx.logs, job_id, number, dirs.log, self.ctx.settings.log_flush_interval)
        self.reporter.report(EventKind.STARTED, {"pid": os.getpid()})
        pump.note(f"attempt {number} of job {job_id} on {self.ctx.settings.node_name}")
        try:
            ending = self._run(dirs, pump)
        except FinalError as exc:
            ending = Ending(AttemptOutcome.FAILED, exc.message)
        except (RetryableError, redis.RedisError, urllib3.exceptions.HTTPError, OSError) as exc:
            ending = Ending(AttemptOutcome.FAILED, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:
            log.exception("attempt %s of job %s broke", number, job_id)
            ending = Ending(
                AttemptOutcome.FAILED, f"worker error: {type(exc).__name__}: {exc}", retryable=True
            )
        pump.note(
            f"attempt {number} ended: {ending.outcome.value}" + (f" ({ending.error})" if ending.error else "")
        )
        pump.close()
        try:
            upload_tree(self.ctx.store, self.reporter, dirs.output, job_id)
            upload_tree(self.ctx.store, self.reporter, dirs.checkpoints, job_id, prefix="checkpoints/")
            log_key = put_file(self.ctx.store, f"logs/{job_id}/attempt-{number}.log", dirs.log).key
        except Exception as exc:
            log.exception("uploads of job %s attempt %s failed", job_id, number)
            ending = Ending(AttemptOutcome.FAILED, f"upload failed: {exc}", retryable=True)
            log_key = None
        self._finish(ending, log_key, list(pump.tail))
        if log_key is not None:
            shutil.rmtree(dirs.root, ignore_errors=True)
        return ending

    def _run(self, dirs: AttemptDirs, pump: LogPump) -> Ending:
        fetched = []
        for ref in self.msg.datasets:
            item = self.ctx.datasets.fetch(ref)
            self.ctx.datasets.place(item, dirs.data)
            how = "cache hit" if item.cached else "downloaded"
            pump.note(f"dataset {item.name}: {item.size} bytes, {how}")
            fetched.append({"name": item.name, "cached": item.cached, "size": item.size})
        self.reporter.report(EventKind.STARTED, {"datasets": fetched})
        dirs.spec.write_text(self.spec.model_dump_json())
        proc = process.start(self._argv(), dirs.root, self._env(dirs))
        pump.follow(proc.stdout)  # type: ignore[arg-type]
        return self._supervise(proc, pump, EventsFileTail(dirs.events))

    def _supervise(self, proc: subprocess.Popen[bytes], pump: LogPump, events: EventsFileTail) -> Ending:
        started = time.monotonic()
        ending: Ending | None = None
        while (code := proc.poll()) is None:
            self._forward(events)
            if self._cancel_requested():
                pump.note("cancel requested: stopping the job")
                ending = Ending(AttemptOutcome.CANCELLED, "cancelled by user")
            elif self.spec.timeout is not None and time.monotonic() - started > self.spec.timeout:
                pump.note(f"timeout of {self.spec.timeout}s reached: stopping the job")
                ending = Ending(AttemptOutcome.FAILED, f"timeout: ran longer than {self.spec.timeout}s")
            if ending is not None:
                process.stop_tree(proc, self.ctx.settings.cancel_grace_period)
                code = proc.wait()
                break
            time.sleep(POLL_SECONDS)
        self._forward(events)
        if ending is None:
            ending = (
                Ending(AttemptOutcome.SUCCEEDED)
                if code == 0
                else Ending(AttemptOutcome.FAILED, f"training process exited with code {code}")
            )
        ending.exit_code = code
        return ending

    def _forward(self, events: EventsFileTail) -> None:
        for item in events.read_new():
            item.setdefault("max_epochs", self.spec.max_epochs)
            self.reporter.report(EventKind.METRICS, item)

    def _cancel_requested(self) -> bool:
        try:
            return bool(self.ctx.redis.exists(cancel_key(self.msg.job_id)))
        except redis.RedisError as exc:  # Redis away: keep training; the flag is read again soon
            log.warning("cannot read the cancel flag: %s", exc)
            return False

    def _argv(self) -> list[str]:
        if self.spec.command is not None:
            return list(self.spec.command)
        assert self.spec.recipe is not None
        return [sys.executable, "-u", "-m", RECIPE_MODULES[self.spec.recipe]]

    def _env(self, dirs: AttemptDirs) -> dict[str, str]:
        # The child inherits the worker's environment (PATH, CUDA, conda) plus the job contract.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(
            {
                "TRAINFARM_JOB_ID": str(self.msg.job_id),
                "TRAINFARM_ATTEMPT": str(self.msg.attempt),
                "TRAINFARM_SPEC_FILE": str(dirs.spec),
                "TRAINFARM_DATA_DIR": str(dirs.data),
                "TRAINFARM_OUTPUT_DIR": str(dirs.output),
                "TRAINFARM_CHECKPOINT_DIR": str(dirs.checkpoints),
                "TRAINFARM_EVENTS_FILE": str(dirs.events),
                "TRAINFARM_DEVICES": str(self.spec.devices),
                "TRAINFARM_HYPERPARAMETERS": json.dumps(self.spec.hyperparameters),
            }
        )
        return env

    def _finish(self, ending: Ending, log_key: str | None, tail: list[str]) -> None:
        self.reporter.report(
            EventKind.FINISHED,
            {
                "outcome": ending.outcome.value,
                "error": ending.error,
                "retryable": ending.retryable,
                "exit_code": ending.exit_code,
                "log_key": log_key,
                "log_tail": "\n".join(tail),
            },
        )
