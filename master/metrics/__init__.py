"""Prometheus metrics of the master, served at /metrics; one module per kind of metric:

- counters: the process-wide counters and histograms, and the helpers observing attempts' waits;
- farm: jobs per status, queue depth, refused messages, Redis memory (read at scrape time);
- queue_depth: how the queue depth is read, from Redis or from RabbitMQ;
- admission: what waits for admission, the devices users' running jobs hold;
- nodes: each node's state and its GPUs' readings;
- request_timer: the middleware timing API requests;
- log_hub: the live-log hub's followers and readers;
- registry: one app's registry of all of these.

Every name is importable from here, as before the package (master/metrics.py).
"""

from master.metrics.admission import RUNNING_DEVICES, WAITING_BY_QUEUE, AdmissionCollector
from master.metrics.counters import (
    ADMISSION_SECONDS,
    ADMISSION_WAIT,
    ADMITTED,
    DISPATCH_LATENCY,
    EVENTS_APPLIED,
    EVENTS_DEAD_LETTERED,
    EVENTS_REFUSED,
    HANDBACKS,
    HTTP_LATENCY,
    JOBS_SUBMITTED,
    LOOP_ERRORS,
    PREEMPTED,
    PROCESS_METRICS,
    STATUS_MOVES_REFUSED,
    WAIT_BUCKETS,
    observe_admitted,
    observe_started,
)
from master.metrics.farm import FarmCollector
from master.metrics.log_hub import (
    LOG_FOLLOWERS_LAGGED,
    LOG_STREAMS_REFUSED,
    LogHubCollector,
    register_log_hub,
)
from master.metrics.nodes import GpuFamilies, NodeCollector
from master.metrics.queue_depth import (
    QueueDepthReader,
    RabbitMQQueueDepth,
    RedisQueueDepth,
    queue_depth_reader,
    rabbitmq_connection,
)
from master.metrics.registry import make_registry
from master.metrics.request_timer import RequestTimer

__all__ = [
    "ADMISSION_SECONDS",
    "ADMISSION_WAIT",
    "ADMITTED",
    "DISPATCH_LATENCY",
    "EVENTS_APPLIED",
    "EVENTS_DEAD_LETTERED",
    "EVENTS_REFUSED",
    "HANDBACKS",
    "HTTP_LATENCY",
    "JOBS_SUBMITTED",
    "LOG_FOLLOWERS_LAGGED",
    "LOG_STREAMS_REFUSED",
    "LOOP_ERRORS",
    "PREEMPTED",
    "PROCESS_METRICS",
    "RUNNING_DEVICES",
    "STATUS_MOVES_REFUSED",
    "WAITING_BY_QUEUE",
    "WAIT_BUCKETS",
    "AdmissionCollector",
    "FarmCollector",
    "GpuFamilies",
    "LogHubCollector",
    "NodeCollector",
    "QueueDepthReader",
    "RabbitMQQueueDepth",
    "RedisQueueDepth",
    "RequestTimer",
    "make_registry",
    "observe_admitted",
    "observe_started",
    "queue_depth_reader",
    "rabbitmq_connection",
    "register_log_hub",
]
