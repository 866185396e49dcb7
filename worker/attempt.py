"""Running one attempt of a job: lease, prepare, start the training process, watch it, report, upload."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass

import redis
import urllib3

from shared.errors import FinalError, RetryableError
from shared.events import DatasetFetched, Finished, Started
from shared.schemas import AttemptOutcome, TaskMessage
from shared.signing import MessageRefused, Refusal
from shared.streams import cancel_key, drain_key, node_attempts_key, preempt_key
from worker import draining, identity
from worker.backends.base import Execution, Launch
from worker.cache_budget import Pins
from worker.checkpoints import CheckpointSync, PeriodicSync
from worker.context import WorkerContext
from worker.jobenv import AttemptDirs
from worker.lease_keeper import LeaseKeeper
from worker.logpump import LogLimits, LogPump
from worker.progress import EventsFileTail
from worker.refusals import record_refusal
from worker.reporter import AttemptReporter
from worker.uploads import archive_log, upload_tree
from worker.usage_sampler import UsageSampler

log = logging.getLogger(__name__)

#: How often the attempt checks its process, cancel and drain flags, timeout and metrics file.
POLL_SECONDS = 0.2
#: How long the last output of an ended process may take to be read.
READER_DRAIN_SECONDS = 30.0
RECIPE_MODULES = {"tabular-classifier": "worker.recipes.tabular"}


@dataclass
class Ending:
    outcome: AttemptOutcome
    error: str | None = None
    retryable: bool = False
    exit_code: int | None = None
    #: The worker is shutting down and gave the attempt back; it costs the job no retry.
    handed_back: bool = False


@dataclass(frozen=True)
class Flags:
    """What the farm asks of a running attempt."""

    cancel: bool
    #: This worker shuts down: checkpoint and hand the attempt back.
    drain: bool
    #: The master preempted the attempt for a job of higher priority (why, as it says): the same.
    preempt: str | None


def root_pid(execution: Execution) -> int | None:
    """The job's root process on this node, for the usage sampler: the process backend's child, or
    a container's first process where the engine runs on this machine's kernel; else None (then
    only the attempt's GPUs are sampled)."""
    pid = getattr(execution, "pid", None)
    return pid if isinstance(pid, int) else None


class AttemptRunner:
    def __init__(self, ctx: WorkerContext, message: TaskMessage, gpus: tuple[int, ...] = ()) -> None:
        self.ctx = ctx
        self.msg = message
        self.gpus = gpus
        self.spec = message.spec
        self.node = ctx.settings.node_name
        #: Drain flag and running-attempts entry are this worker's, not the node's (siblings share it).
        self.worker = identity.current().key
        self.holder = f"{self.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.reporter = AttemptReporter(ctx.bus, message.job_id, message.attempt, self.node, self.worker)

    def run(self) -> Ending | None:
        """Run the attempt; None when it is not ours to run (a duplicate delivery)."""
        job_id, number = self.msg.job_id, self.msg.attempt
        if not self.ctx.leases.acquire(job_id, number, self.holder):
            if self.ctx.leases.ended(job_id, number):
                refused = MessageRefused(Refusal.REPLAYED, f"job {job_id} attempt {number} already ran")
                record_refusal(self.ctx.redis, refused, None, self.node)
            else:
                log.warning("job %s attempt %s runs elsewhere: duplicate dropped", job_id, number)
            return None
        keeper = LeaseKeeper(self.ctx.leases, job_id, number, self.holder)
        keeper.start()
        running = json.dumps(
            {"job_id": job_id, "attempt": number, "started": time.time(), "pid": os.getpid()}
        )
        self.ctx.redis.hset(node_attempts_key(self.worker), f"{job_id}-{number}", running)
        try:
            flags = self._flags()
            if flags.cancel:
                ending = Ending(AttemptOutcome.CANCELLED, "cancelled before it started")
                self._finish(ending, log_key=None, tail=[])
            elif flags.preempt is not None:
                error = f"preempted before it started: {flags.preempt}"
                ending = Ending(AttemptOutcome.FAILED, error, retryable=True, handed_back=True)
                self._finish(ending, log_key=None, tail=[])
            else:
                ending = self._run_leased(keeper)
            self.ctx.leases.end(job_id, number, self.holder)
        finally:
            keeper.stop()
            self.ctx.redis.hdel(node_attempts_key(self.worker), f"{job_id}-{number}")
        return ending

    def _run_leased(self, keeper: LeaseKeeper) -> Ending:
        job_id, number = self.msg.job_id, self.msg.attempt
        dirs = AttemptDirs.create(self.ctx.settings.job_work_dir, job_id, number)
        settings = self.ctx.settings
        pump = LogPump(
            self.ctx.logs, job_id, number, dirs.log, settings.log_flush_interval, LogLimits.of(settings)
        )
        checkpoints = CheckpointSync(self.ctx.store, self.reporter, job_id, dirs.checkpoints)
        self.reporter.report(Started(pid=os.getpid()))
        pump.note(f"attempt {number} of job {job_id} on {self.node}")
        try:
            # The caches keep what this attempt uses until it ends, whatever other attempts add.
            with Pins(self.holder) as pins:
                ending = self._prepare_and_run(dirs, pump, checkpoints, keeper, pins)
        except FinalError as exc:
            ending = Ending(AttemptOutcome.FAILED, exc.message)
        except (RetryableError, redis.RedisError, urllib3.exceptions.HTTPError, OSError) as exc:
            ending = Ending(AttemptOutcome.FAILED, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:
            log.exception("attempt %s of job %s broke", number, job_id)
            error = f"worker error: {type(exc).__name__}: {exc}"
            ending = Ending(AttemptOutcome.FAILED, error, retryable=True)
        detail = f" ({ending.error})" if ending.error else ""
        pump.note(f"attempt {number} ended: {ending.outcome.value}{detail}")
        try:  # the log stays open meanwhile, for what the uploads have to say
            upload_tree(self.ctx.store, self.reporter, dirs.output, job_id, note=pump.note)
            checkpoints.sync()
        except Exception as exc:
            log.exception("uploads of job %s attempt %s failed", job_id, number)
            ending = Ending(AttemptOutcome.FAILED, f"upload failed: {exc}", retryable=True)
            pump.note(f"attempt {number} uploads failed: {exc}")
        pump.close()
        # In a step of its own: the live stream no longer holds the early lines (its budget), so
        # the archive is the only full copy, whatever became of the outputs.
        log_key = self._archive_log(dirs)
        self._finish(ending, log_key, list(pump.tail))
        if log_key is not None:
            shutil.rmtree(dirs.root, ignore_errors=True)
        return ending

    def _archive_log(self, dirs: AttemptDirs) -> str | None:
        """The attempt's log in S3, its key; None when it could not go there (it stays on the node)."""
        job_id, number = self.msg.job_id, self.msg.attempt
        try:
            if dirs.log.is_symlink():  # the job swapped it for a link to a file of the node
                dirs.log.unlink()
                dirs.log.write_text(
                    "[trainfarm] the job replaced its log file with a link; it was not kept\n"
                )
            return archive_log(
                self.ctx.store, self.ctx.logs, job_id, number, dirs.log, self.ctx.settings.log_archived_ttl
            )
        except Exception:
            log.exception("the log of job %s attempt %s stays at %s: upload failed", job_id, number, dirs.log)
            return None

    def _prepare_and_run(
        self, dirs: AttemptDirs, pump: LogPump, checkpoints: CheckpointSync, keeper: LeaseKeeper, pins: Pins
    ) -> Ending:
        fetched: list[DatasetFetched] = []
        for ref in self.msg.datasets:
            item = self.ctx.datasets.fetch(ref, pins)
            self.ctx.datasets.place(item, dirs.data)
            how = "cache hit" if item.cached else "downloaded"
            pump.note(f"dataset {item.name}: {item.size} bytes, {how}")
            fetched.append(DatasetFetched(name=item.name, cached=item.cached, size=item.size))
        workdir = dirs.root
        if self.spec.code is not None:
            count = self.ctx.code.unpack(self.spec.code, dirs.code, pins)
            pump.note(f"code bundle {self.spec.code[:12]}: {count} files")
            workdir = dirs.code
        restored = checkpoints.restore()
        if restored:
            pump.note(f"restored checkpoint {restored} from an earlier attempt")
        self.reporter.report(Started(datasets=fetched, restored_checkpoint=restored))
        dirs.spec.write_text(self.spec.model_dump_json())
        backend = self.ctx.backend(self.spec)
        where = f"GPUs {','.join(map(str, self.gpus))}" if self.gpus else "no GPU"
        pump.note(f"starting with the {backend.name} backend, {where}")
        execution = backend.start(Launch(self.msg, dirs, self._argv(), workdir, self.gpus))
        sampler = UsageSampler(
            self.reporter, self.gpus, root_pid(execution), self.ctx.settings.usage_sample_interval
        )
        try:
            pump.follow(execution.output())
            sampler.start()
            syncer = PeriodicSync(checkpoints, self.spec.checkpoint_interval)
            syncer.start()
            try:
                return self._supervise(execution, pump, EventsFileTail(dirs.events, pump.note), keeper)
            finally:
                syncer.stop()
        finally:
            sampler.stop()  # no sample after the attempt's end
            self._end(execution, pump)

    def _end(self, execution: Execution, pump: LogPump) -> None:
        """Whatever happened, nothing of the job outlives the attempt: its GPUs go to the next one."""
        try:
            # Still running: we broke out of supervision. Ended: what it left in its process group
            # (`cmd &`, a stray DataLoader worker) would hold its output open and its GPU busy.
            running = execution.poll() is None
            execution.stop(self.ctx.settings.cancel_grace_period if running else 0)
        except Exception:  # an engine that stopped answering, say: close() still removes it
            log.exception("stopping job %s attempt %s failed", self.msg.job_id, self.msg.attempt)
        finally:
            pump.join_readers(READER_DRAIN_SECONDS)  # every last line read before the container goes
            execution.close()

    def _supervise(
        self, execution: Execution, pump: LogPump, events: EventsFileTail, keeper: LeaseKeeper
    ) -> Ending:
        started = time.monotonic()
        ending: Ending | None = None
        while (code := execution.poll()) is None:
            self._forward(events)
            flags = self._flags()
            if flags.cancel:
                pump.note("cancel requested: stopping the job")
                ending = Ending(AttemptOutcome.CANCELLED, "cancelled by user")
            elif flags.preempt is not None:
                pump.note(f"preempted: {flags.preempt}: checkpointing and handing the job back")
                ending = Ending(AttemptOutcome.FAILED, f"preempted: {flags.preempt}", True, handed_back=True)
            elif flags.drain:
                pump.note(f"{self.node} is shutting down: checkpointing and handing the job back")
                ending = Ending(
                    AttemptOutcome.FAILED, f"handed back: {self.node} shut down", True, handed_back=True
                )
            elif keeper.lost.is_set():
                pump.note("this attempt was declared lost (lease expired): stopping it")
                ending = Ending(AttemptOutcome.FAILED, "lease lost: the attempt was given up on")
            elif self.spec.timeout is not None and time.monotonic() - started > self.spec.timeout:
                pump.note(f"timeout of {self.spec.timeout}s reached: stopping the job")
                ending = Ending(AttemptOutcome.FAILED, f"timeout: ran longer than {self.spec.timeout}s")
            if ending is not None:
                execution.stop(self.ctx.settings.cancel_grace_period)
                code = execution.wait()
                break
            time.sleep(POLL_SECONDS)
        self._forward(events, final=True)
        if ending is None:
            failed = Ending(AttemptOutcome.FAILED, f"training process exited with code {code}")
            ending = Ending(AttemptOutcome.SUCCEEDED) if code == 0 else failed
        ending.exit_code = code
        return ending

    def _forward(self, events: EventsFileTail, final: bool = False) -> None:
        """Report the job's new metrics lines (its bad lines become warnings in its log); `final`
        reads to the end of the file and says how many bad lines went unwarned."""
        while True:
            for line in events.read_new():
                if line.max_epochs is None:
                    line = line.model_copy(update={"max_epochs": self.spec.max_epochs})
                self.reporter.report(line)
            if not final or events.at_end:
                break
        if final:
            events.finish()

    def _flags(self) -> Flags:
        """The cancel, preempt and drain flags in one round trip; Redis away means none of them
        (but this process's own drain), read again soon."""
        job_id, number = self.msg.job_id, self.msg.attempt
        try:
            cancel, drain, preempt = self.ctx.redis.mget(
                cancel_key(job_id), drain_key(self.worker), preempt_key(job_id, number)
            )
        except redis.RedisError as exc:
            log.warning("cannot read the cancel, preempt and drain flags: %s", exc)
            return Flags(cancel=False, drain=draining.requested(), preempt=None)
        reason = preempt.decode(errors="replace")[:500] if isinstance(preempt, bytes) else preempt
        return Flags(
            cancel=cancel is not None, drain=drain is not None or draining.requested(), preempt=reason
        )

    def _argv(self) -> list[str]:
        if self.spec.command is not None:
            return list(self.spec.command)
        assert self.spec.recipe is not None
        return ["python", "-u", "-m", RECIPE_MODULES[self.spec.recipe]]

    def _finish(self, ending: Ending, log_key: str | None, tail: list[str]) -> None:
        self.reporter.report(
            Finished(
                outcome=ending.outcome,
                error=ending.error,
                retryable=ending.retryable,
                handed_back=ending.handed_back,
                exit_code=ending.exit_code,
                log_key=log_key,
                log_tail="\n".join(tail),
            )
        )
