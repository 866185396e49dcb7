"""The admitter: one thread that decides, whenever something changes, which waiting jobs start.

Told of every change that can let a job start (a submission, an attempt's end, a node joining or
leaving, a cap changed, a cancel), it runs one decision over every queue (`decide_queue`), admits
with one conditional UPDATE, publishes the admitted attempts' messages, and flags the attempts it
preempts. Changes that arrive while a decision runs are gathered into the next one. Between
changes it sleeps, waking only for a retry's backoff to end or for the periodic full re-read.

Only what is in the database counts: an attempt is admitted when its `admitted_at` is written
(an UPDATE that only a queued, unadmitted attempt passes, so nothing is admitted twice), and a
master that restarts reads the waiting jobs and what is held back from the tables. One admitter per
farm: two masters on one database would each keep the caps, but together could pass them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from master import audit
from master.dispatch import Dispatcher
from master.fairshare.capacity import QueueCapacity, capacity_of, fingerprint
from master.fairshare.caps import CapBook, Caps, read_caps
from master.fairshare.decide import QueueDecision, decide_queue
from master.fairshare.holdings import Holding, load_holdings
from master.fairshare.preemption import PreemptionPolicy
from master.fairshare.usage import UsageMeter
from master.fairshare.view import AdmissionView
from master.fairshare.waiting import WaitingJob, WaitingSet, load_waiting
from master.metrics import ADMISSION_SECONDS, ADMITTED, LOOP_ERRORS, PREEMPTED, observe_admitted
from master.models import Job, JobAttempt, Node, utcnow
from shared.settings import Settings
from shared.status import JobStatus
from shared.streams import preempt_key

log = logging.getLogger(__name__)

#: A preempt flag outlives any grace period a worker gives its job.
PREEMPT_FLAG_TTL = 86400
#: Seconds a node sync's reading of capacity stands in for a fresh one (syncs come every 2 s at most).
CAPACITY_FRESH = 2.5
#: After a failed decision (database or Redis away), the next one waits this long.
ERROR_BACKOFF = 1.0


@dataclass(frozen=True)
class Outcome:
    """What one decision did."""

    admitted: int
    preempted: int
    waiting: int
    seconds: float


class Admitter:
    def __init__(
        self,
        engine: Engine,
        dispatcher: Dispatcher,
        broker: redis.Redis,
        settings: Settings,
        meter: UsageMeter,
    ) -> None:
        self._engine = engine
        self._dispatcher = dispatcher
        self._broker = broker
        self._meter = meter
        self._offline_after = settings.node_offline_after
        self._default_caps = Caps(settings.user_max_devices, settings.user_max_queued)
        self._policy = PreemptionPolicy(settings.preemption, settings.preemption_grace)
        self._resync_interval = settings.admission_resync_interval
        self._half_life = settings.fairshare_half_life
        self._waiting = WaitingSet()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        #: Held for the whole of a decision: by the admitter's thread, or by a submission's request.
        self._deciding = threading.Lock()
        self._noticed: list[int] = []
        self._forgotten: list[int] = []
        self._resync_at = 0.0  # monotonic: the first decision reads everything
        self._capacity_seen: object = None
        self._capacity: tuple[float, dict[str, QueueCapacity]] = (-float("inf"), {})
        self._thread: threading.Thread | None = None
        #: The last decision, for the routes; None before the first.
        self.view: AdmissionView | None = None

    # Being told -----------------------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed that may let a job start."""
        self._changed.set()

    def submitted(self, attempt_ids: Iterable[int]) -> None:
        """Attempts a request just stored: decide in the caller's thread when no decision is
        running, so the request answers with its jobs already published when they may start (the
        thread would only add its wake-up to the job's start); else the running decision's next
        round takes them. A failed decision here is the thread's to retry, never the request's."""
        with self._lock:
            self._noticed.extend(attempt_ids)
        if not self._deciding.acquire(blocking=False):
            self.wake()
            return
        try:
            self._decide()
        except Exception:
            log.exception("admission in a request failed; the admission thread decides again")
            LOOP_ERRORS.labels("admission").inc()
            self.wake()
        finally:
            self._deciding.release()

    def forget(self, job_id: int) -> None:
        """A waiting job ended without running (cancelled)."""
        with self._lock:
            self._forgotten.append(job_id)
        self.wake()

    def nodes_synced(self, session: Session) -> None:
        """After a node sync: decide again only when what the nodes offer changed."""
        capacity = capacity_of(session.exec(select(Node)), self._offline_after)
        self._capacity = (time.monotonic(), capacity)
        seen = fingerprint(capacity)
        if seen != self._capacity_seen:
            self._capacity_seen = seen
            self.wake()

    def _read_capacity(self, session: Session) -> dict[str, QueueCapacity]:
        """What the nodes offer: as the last node sync read it, when that is fresh (nodes change
        only at a sync), else read now."""
        at, capacity = self._capacity
        if time.monotonic() - at > CAPACITY_FRESH:
            capacity = capacity_of(session.exec(select(Node)), self._offline_after)
            self._capacity = (time.monotonic(), capacity)
            self._capacity_seen = fingerprint(capacity)
        return capacity

    # Running --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="admission", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(self._sleep())
            self._changed.clear()
            if self._stopping.is_set():
                return
            try:
                self.decide()
            except Exception:
                log.exception("admission failed; deciding again in %.1fs", ERROR_BACKOFF)
                LOOP_ERRORS.labels("admission").inc()
                self._changed.set()
                self._stopping.wait(ERROR_BACKOFF)

    def _sleep(self) -> float:
        """Until the next backoff ends or the next full re-read, whichever is first."""
        until = self._resync_at - time.monotonic()
        due = self._waiting.next_due()
        if due is not None:
            until = min(until, due - time.time())
        return max(until, 0.0)

    # Deciding -------------------------------------------------------------------------------------

    def decide(self) -> Outcome:
        """One decision over every queue, acted on (after any decision a request is making)."""
        with self._deciding:
            return self._decide()

    def _decide(self) -> Outcome:
        begun = time.perf_counter()
        now = time.time()
        with self._lock:
            noticed, self._noticed = self._noticed, []
            forgotten, self._forgotten = self._forgotten, []
        with Session(self._engine) as session:
            self._refresh(session, noticed, forgotten, now)
            holdings = load_holdings(session)
            capacity = self._read_capacity(session)
            caps = read_caps(session, self._default_caps)
            usage = self._meter.read(session, [r for h in holdings if (r := h.running()) is not None], now)
            decisions = self._decide_all(holdings, capacity, caps, usage, now)
            admitted = [job for d in decisions.values() for job in d.admit]
            granted = self._admit(session, admitted) if admitted else 0
            preempted = self._preempt(session, decisions) if self._policy.enabled else 0
        self.view = AdmissionView(
            at=utcnow(),
            decisions=decisions,
            ranks={q: {u: list(r) for u, r in self._waiting.users(q).items()} for q in decisions},
            delayed=self._waiting.delayed_jobs(),
            usage=usage,
            caps=caps,
            half_life=self._half_life,
        )
        seconds = time.perf_counter() - begun
        ADMISSION_SECONDS.observe(seconds)
        return Outcome(granted, preempted, len(self._waiting), seconds)

    def _refresh(self, session: Session, noticed: list[int], forgotten: list[int], now: float) -> None:
        """Bring the waiting set up to the database: everything now and then, else what is new."""
        if time.monotonic() >= self._resync_at:
            self._waiting.replace(load_waiting(session), now)
            self._resync_at = time.monotonic() + self._resync_interval
        else:
            for job in load_waiting(session, after=self._waiting.watermark, attempt_ids=noticed):
                self._waiting.put(job, now)
        for job_id in forgotten:
            self._waiting.remove(job_id)
        self._waiting.release_due(now)

    def _decide_all(
        self,
        holdings: list[Holding],
        capacity: dict[str, QueueCapacity],
        caps: CapBook,
        usage: dict[tuple[str, str], float],
        now: float,
    ) -> dict[str, QueueDecision]:
        by_queue: dict[str, list[Holding]] = {}
        for h in holdings:
            by_queue.setdefault(h.queue, []).append(h)
        queues = set(self._waiting.queues()) | set(capacity) | set(by_queue)
        return {
            q: decide_queue(
                q,
                self._waiting,
                by_queue.get(q, []),
                capacity.get(q) or QueueCapacity(q),
                caps,
                usage,
                self._policy,
                now,
            )
            for q in sorted(queues)
        }

    def _admit(self, session: Session, admitted: list[WaitingJob]) -> int:
        """Mark the attempts admitted (only those still queued and not yet admitted pass), then send
        their messages; a crash in between leaves them to the dispatcher's sweep."""
        ids = [job.attempt_id for job in admitted]
        result = session.execute(
            update(JobAttempt)
            .where(
                col(JobAttempt.id).in_(ids),
                col(JobAttempt.status) == JobStatus.QUEUED,
                col(JobAttempt.admitted_at).is_(None),
            )
            .values(admitted_at=utcnow())
            .returning(col(JobAttempt.id))
        )
        granted = set(result.scalars())
        rows = session.exec(
            select(Job, JobAttempt)
            .join(JobAttempt, JobAttempt.job_id == Job.id)  # type: ignore[arg-type]
            .where(col(JobAttempt.id).in_(granted))
        ).all()
        for row_job, row_attempt in rows:
            observe_admitted(row_job.queue, row_attempt)
        publications = self._dispatcher.prepare(session, [(job, attempt) for job, attempt in rows])
        session.commit()
        for job in admitted:
            self._waiting.remove(job.job_id)
        self._dispatcher.publish(publications)
        ADMITTED.inc(len(granted))
        if len(granted) < len(admitted):
            self.wake()  # some were cancelled meanwhile: the room they were given goes to others
        return len(granted)

    def _preempt(self, session: Session, decisions: dict[str, QueueDecision]) -> int:
        """Flag the attempts chosen to make room; their workers checkpoint and hand them back."""
        done = 0
        stamp = utcnow()
        for decision in decisions.values():
            if decision.stop is None:
                continue
            waiting = decision.stop.job
            for victim in decision.preempt:
                reason = (
                    f"preempted for job {waiting.job_id} (priority {waiting.priority}) "
                    f"of {waiting.owner or 'nobody'}"
                )
                # The flag first: a job marked preempting whose worker was never told would hold
                # its devices as "on their way out" for ever.
                self._broker.set(preempt_key(victim.job_id, victim.attempt), reason, ex=PREEMPT_FLAG_TTL)
                result = session.execute(
                    update(Job)
                    .where(col(Job.id) == victim.job_id, col(Job.preempting).is_(None))
                    .values(
                        preempting=victim.attempt,
                        last_preempted_at=stamp,
                        preemptions=col(Job.preemptions) + 1,
                    )
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    audit.record(
                        session, None, "job.preempt", f"job {victim.job_id}", {"for": waiting.job_id}, None
                    )
                    log.info("job %s attempt %s %s", victim.job_id, victim.attempt, reason)
                    PREEMPTED.inc()
                    done += 1
        session.commit()
        return done
