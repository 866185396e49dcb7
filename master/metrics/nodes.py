"""Each node's state and its GPUs' readings, from the heartbeats the nodes table keeps."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlmodel import Session, select

from master.models import Node, utcnow
from master.nodes import FORGET_AFTER_SECONDS, to_public


class NodeCollector(Collector):
    """Each node's state and its GPUs' readings, from the heartbeats the nodes table keeps."""

    def __init__(self, engine: Engine, offline_after: float) -> None:
        self._engine = engine
        self._offline_after = offline_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with Session(self._engine) as session:
            nodes = [to_public(node, self._offline_after) for node in session.exec(select(Node)).all()]
        online = GaugeMetricFamily(
            "trainfarm_node_online",
            "1 while a node beats, 0 once it has been silent too long",
            labels=["node"],
        )
        serves = GaugeMetricFamily(
            "trainfarm_node_queue",
            "1 for each queue an online node's workers take jobs from",
            labels=["node", "queue"],
        )
        gpus = GpuFamilies()
        now = utcnow()
        for node in nodes:
            if (now - node.last_seen).total_seconds() > FORGET_AFTER_SECONDS:
                continue  # gone a day: the master forgot its beat too; no alert forever
            online.add_metric([node.name], 1.0 if node.online else 0.0)
            if not node.online:
                continue  # what a silent node said last is not what its GPUs do now
            for queue in node.queues:
                serves.add_metric([node.name, queue], 1.0)
            gpus.add_node(node.name, node.info)
        yield online
        yield serves
        yield from gpus.families()


class GpuFamilies:
    """The per-GPU gauges of the online nodes, from the `gpus` list of their beats (worker/gpus.py);
    a reading the device does not give (None) has no sample."""

    def __init__(self) -> None:
        gpu = ["node", "gpu"]
        self.utilization = GaugeMetricFamily(
            "trainfarm_gpu_utilization_ratio", "Share of time the GPU was busy (0..1)", labels=[*gpu, "name"]
        )
        self.memory_used = GaugeMetricFamily(
            "trainfarm_gpu_memory_used_bytes", "GPU memory in use", labels=gpu
        )
        self.memory_total = GaugeMetricFamily("trainfarm_gpu_memory_total_bytes", "GPU memory", labels=gpu)
        self.temperature = GaugeMetricFamily(
            "trainfarm_gpu_temperature_celsius", "GPU temperature, where NVML gives it", labels=gpu
        )
        self.job_slot = GaugeMetricFamily(
            "trainfarm_gpu_job_slot", "1 if the node hands the GPU out to jobs, 0 if held back", labels=gpu
        )

    def add_node(self, node: str, info: dict[str, Any]) -> None:
        slots = {s for s in _list(info.get("gpu_slots")) if isinstance(s, int)}
        for entry in _list(info.get("gpus")):
            index = entry.get("index") if isinstance(entry, dict) else None
            if not isinstance(index, int) or isinstance(index, bool):
                continue
            labels = [node, str(index)]
            if (util := _reading(entry.get("utilization_percent"))) is not None:
                self.utilization.add_metric([*labels, str(entry.get("name") or "")], util / 100)
            for family, field in (
                (self.memory_used, "memory_used"),
                (self.memory_total, "memory_total"),
                (self.temperature, "temperature_c"),
            ):
                if (value := _reading(entry.get(field))) is not None:
                    family.add_metric(labels, value)
            self.job_slot.add_metric(labels, 1.0 if index in slots else 0.0)

    def families(self) -> Iterator[GaugeMetricFamily]:
        yield from (self.utilization, self.memory_used, self.memory_total, self.temperature, self.job_slot)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _reading(value: object) -> float | None:
    """A number a worker reported, or None (missing, not a number, not finite)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
