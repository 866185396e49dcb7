"""The master's background loops: apply events, publish missed attempts, sync node heartbeats, drive
sweeps, send notifications, mirror jobs to MLflow, summarize ended jobs' metric series."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine
from sqlmodel import Session

from master.events import EventConsumer
from master.experiments.summaries import SeriesSummarizer
from master.metrics import LOOP_ERRORS
from master.mlflow_mirror.mirror import MlflowMirror
from master.nodes import sync_nodes
from master.notify.notifier import Notifier
from master.reaper import LeaseReaper
from master.state import MasterState
from master.sweeps.driver import SweepDriver

log = logging.getLogger(__name__)


class Loop(threading.Thread):
    """Runs `step` until stopped; an error is logged and retried after `backoff`, never fatal,
    because Redis or the database being away for a while must not kill the master."""

    def __init__(self, name: str, step: Callable[[], object], interval: float, backoff: float = 1.0) -> None:
        super().__init__(name=name, daemon=True)
        self._step = step
        self._interval = interval
        self._backoff = backoff
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._step()
            except Exception:
                log.exception("%s failed; retrying in %.1fs", self.name, self._backoff)
                LOOP_ERRORS.labels(self.name).inc()
                self.stopping.wait(self._backoff)
                continue
            if self._interval:
                self.stopping.wait(self._interval)

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.join(timeout)


#: Seconds between lease checks of running attempts.
REAP_INTERVAL = 2.0


class ConsumeThenReap:
    """Events first, then leases, in one thread: an attempt whose `finished` event is still
    waiting in the stream must not be declared lost, and the two never race on a job's row.

    Neither stops the other: an error in either is logged, counted and followed by a short pause.
    A round whose events failed skips the reaper, because its verdicts need the events applied; a
    bad event no longer fails a round (it is dead-lettered), so that only happens while Redis or
    the database is away, when the reaper could not work either.
    """

    def __init__(
        self,
        consumer: EventConsumer,
        reaper: LeaseReaper,
        pause: float = 1.0,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._consumer = consumer
        self._reaper = reaper
        #: Told when the reaper declared attempts lost: their devices are free again.
        self._on_lost = on_lost
        self._pause = pause
        self._last_reap = 0.0

    def __call__(self) -> None:
        try:
            backlog = self._consumer.poll() >= self._consumer.batch
        except Exception:
            log.exception("applying events failed; again in %.1fs", self._pause)
            LOOP_ERRORS.labels("events").inc()
            time.sleep(self._pause)
            return
        if not backlog and time.monotonic() - self._last_reap >= REAP_INTERVAL:
            # Stamped first: a failing reaper waits its interval too rather than run every round.
            self._last_reap = time.monotonic()
            try:
                if self._reaper.poll() and self._on_lost is not None:
                    self._on_lost()
            except Exception:
                log.exception("the lease check failed; again in %.1fs", REAP_INTERVAL)
                LOOP_ERRORS.labels("leases").inc()


def start_loops(
    consumer: EventConsumer, reaper: LeaseReaper, state: MasterState, engine: Engine
) -> list[Loop]:
    dispatcher = state.dispatcher
    settings = state.settings

    def sweep() -> None:
        with Session(engine) as session:
            dispatcher.sweep(session)

    def sync() -> None:
        sync_nodes(state.broker, engine, settings.node_offline_after)
        with Session(engine) as session:
            state.admitter.nodes_synced(session)  # a node joined, left or changed what it offers

    loops = [
        # poll() blocks on Redis for up to half a second, so it needs no sleep of its own.
        Loop("events-and-leases", ConsumeThenReap(consumer, reaper, on_lost=state.admitter.wake), interval=0),
        Loop("dispatch-sweep", sweep, interval=1.0),
        Loop("published-marks", dispatcher.marks.flush, interval=0.1),
        # As often as workers beat (at most every 2 s): a new node's slots are seen at its first beat.
        Loop("node-sync", sync, interval=min(2.0, settings.heartbeat_interval)),
        Loop("sweeps", SweepDriver(state).round, interval=settings.sweep_interval),
        # Deliveries wait on receivers (up to webhook_timeout each): a thread of their own, so a
        # slow receiver never holds up events, sweeps or admission.
        Loop("notifier", Notifier(engine, settings).round, interval=0.5),
        # Ended jobs' metric series, downsampled once so comparing runs need not read every report.
        Loop("series", SeriesSummarizer(engine).round, interval=1.0),
    ]
    if settings.mlflow_tracking_uri:
        loops.append(Loop("mlflow-mirror", MlflowMirror(engine, settings).round, interval=1.0))
    for loop in loops:
        loop.start()
    return loops
