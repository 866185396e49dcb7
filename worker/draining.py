"""This worker process is shutting down: its running attempts checkpoint and hand their jobs back,
and a task that reaches it is returned to its queue unstarted.

Two ways to learn it: the Celery main process sets a Redis flag for this worker (`drain_key` of its
identity: it reaches pool children whatever signals they got, and no sibling worker on the same
machine), and a pool child that receives SIGTERM itself (systemd's default `KillMode=control-group`
signals every process of the service) sets the local flag at once instead of dying mid-attempt.

A pool child's own flag drains the attempt it runs, not the child for good: once that is handed
back, and the worker as a whole is not shutting down (its Redis flag is absent), the child takes
jobs again (`settle`). Otherwise a child signalled on its own would return every job it receives,
over and over, without any running.
"""

from __future__ import annotations

import signal
import threading

from billiard.process import current_process

_requested = threading.Event()
_pool_child = False


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def settle(worker_draining: bool) -> None:
    """After a task: a pool child whose SIGTERM drained it takes jobs again unless the worker
    drains too. In the main process (solo, threads) the flag means the worker stops: it stays."""
    if _pool_child and not worker_draining:
        _requested.clear()


def mark_pool_child() -> None:
    """Called on `worker_process_init`, which the solo pool also sends in the main process: that
    one keeps Celery's SIGTERM handler, or SIGTERM would never stop the worker."""
    global _pool_child
    _pool_child = current_process().name != "MainProcess"


def handle_sigterm() -> None:
    """In a prefork pool child: SIGTERM means drain, not die; the parent's warm shutdown waits.

    Called when a task starts, because billiard resets the child's signal handlers after its
    start-up hooks; never in the main process, whose SIGTERM handler is Celery's warm shutdown.
    """
    if _pool_child and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _signum, _frame: request())
