"""The live-log hub's metrics: its followers and Redis readers, and the streams it refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from master.log_hub import LogHub

LOG_STREAMS_REFUSED = Counter(
    "trainfarm_log_streams_refused_total", "Live-log streams answered 429: the client held its cap already"
)
LOG_FOLLOWERS_LAGGED = Counter(
    "trainfarm_log_followers_lagged_total", "Times a slow live-log follower fell behind and re-read its log"
)


class LogHubCollector(Collector):
    """Live-log followers and the Redis reads that serve them, read at scrape time."""

    def __init__(self, hub: LogHub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fanout = self._hub.fanout
        yield GaugeMetricFamily("trainfarm_log_followers", "Live-log streams open on a job", fanout.followers)
        yield GaugeMetricFamily("trainfarm_log_followed_jobs", "Jobs with a live-log follower", fanout.jobs)
        yield GaugeMetricFamily(
            "trainfarm_log_readers", "Blocking Redis reads serving all live-log followers", self._hub.readers
        )


def register_log_hub(registry: CollectorRegistry, hub: LogHub) -> None:
    registry.register(LOG_STREAMS_REFUSED)
    registry.register(LOG_FOLLOWERS_LAGGED)
    registry.register(LogHubCollector(hub))
