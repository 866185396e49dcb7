"""The Celery application of compute nodes."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from shared.celery_config import celery_config
from shared.settings import get_settings
from shared.streams import drain_key

log = logging.getLogger(__name__)

app = Celery("trainfarm-worker", include=["worker.tasks"])
app.conf.update(celery_config(get_settings()))

#: How long a drain flag may outlive a worker that never came back to clear it. It names one
#: worker instance, which never runs again, so a stale one can drain nothing.
DRAIN_FLAG_SECONDS = 3600


@signals.worker_init.connect
def _on_init(**_: Any) -> None:
    from worker import identity
    from worker.refusals import load_verifier

    # In the main process, before the pool forks: every pool child inherits this identity.
    me = identity.establish()
    verifier = load_verifier(get_settings())  # no key: it says what to set, and the worker stops
    log.info(
        "worker %s (node %s, instance %s) starting; runs messages signed by key %s",
        me.key,
        me.node,
        me.instance,
        verifier.key_id,
    )


@signals.worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from worker.heartbeat import start_heartbeat

    _remove_orphan_containers()
    start_heartbeat(sender)


def _remove_orphan_containers() -> None:
    """Job containers that a worker killed with -9 (this node's or a sibling's on this machine)
    left behind; their attempts were declared lost and run again, so they only hold GPUs and
    memory now. Containers of live workers are theirs: `remove_orphans` checks each owner."""
    from worker.backends.docker import docker_client, remove_orphans

    node = get_settings().node_name
    try:
        client = docker_client(get_settings(), timeout=10)
    except Exception as exc:  # docker.errors.DockerException: no engine here, or no access to it
        log.info("no Docker engine reachable (%s): this node runs no Docker jobs until there is", exc)
        return
    try:
        removed = remove_orphans(client, node)
        if removed:
            log.warning("removed %d job containers that a killed worker of %s left", removed, node)
    except Exception as exc:  # never keep a worker from starting over leftovers
        log.error("could not remove leftover job containers of %s: %s", node, exc)
    finally:
        client.close()


@signals.worker_process_init.connect
def _on_pool_child_start(**_: Any) -> None:
    from worker import draining

    draining.mark_pool_child()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    from worker import context, draining, identity
    from worker.heartbeat import stop_heartbeat

    draining.request()  # attempts running in this very process (solo and threads pools)
    # Running attempts see the flag, checkpoint, and hand their job back to the queue, so a
    # deploy or reboot costs the job minutes of progress at most, not the whole run. The flag is
    # this worker's alone: a sibling worker on the same machine goes on working.
    try:
        key = drain_key(identity.current().key)
        context.current().redis.set(key, "1", ex=DRAIN_FLAG_SECONDS)
    except Exception as exc:  # shutting down regardless; the lease expiry then recovers the job
        log.error("could not flag the shutdown to running attempts: %s", exc)
    stop_heartbeat()


@signals.worker_shutdown.connect
def _on_exit(**_: Any) -> None:
    from worker import context, heartbeat, identity

    # The pool has finished: nothing reads the flag any more.
    try:
        context.current().redis.delete(drain_key(identity.current().key))
    except Exception as exc:  # it expires on its own
        log.info("could not clear this worker's drain flag: %s", exc)
    heartbeat.forget()
