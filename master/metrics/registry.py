"""One Prometheus registry per app: the process-wide counters plus that app's view of the farm."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from master.metrics.admission import AdmissionCollector
from master.metrics.counters import PROCESS_METRICS
from master.metrics.farm import FarmCollector
from master.metrics.nodes import NodeCollector
from master.metrics.queue_depth import QueueDepthReader, queue_depth_reader
from shared.settings import Settings, get_settings


def make_registry(
    engine: Engine,
    broker: redis.Redis,
    settings: Settings | None = None,
    depth: QueueDepthReader | None = None,
) -> CollectorRegistry:
    """The registry an app serves at /metrics.

    :param broker: the farm's Redis.
    :param settings: the app's (default: `get_settings()`): when a node counts as offline
        (`node_offline_after`), and where the task queues live (`broker_url`).
    :param depth: reads the task queues; default: the reader `settings` call for, on `broker` or
        on RabbitMQ.
    """
    settings = settings or get_settings()
    registry = CollectorRegistry()
    for collector in PROCESS_METRICS:
        registry.register(collector)
    depth = depth or queue_depth_reader(settings, broker)
    registry.register(FarmCollector(engine, broker, depth))
    registry.register(AdmissionCollector(engine))
    registry.register(NodeCollector(engine, settings.node_offline_after))
    return registry
