"""The monitoring kit in deploy/: Prometheus's config and alerts pass promtool and each alert's unit
tests; every metric the alerts and the Grafana dashboard name is one a real master exports; and the
master's gauges carry what the nodes' heartbeats and the database say."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlmodel import Session

from master.metrics import AdmissionCollector, observe_admitted, observe_started
from master.models import Job, JobAttempt, utcnow
from shared.settings import Settings
from shared.status import JobStatus
from shared.streams import NODES_KEY
from tests.conftest import wait_for
from trainfarm.services.farm import MasterProcess

ON_CI = os.environ.get("CI") == "true"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "trainfarm.json"
GIB = 1024**3


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = (
            "promtool is not installed (Debian: apt-get install prometheus): "
            "deploy/prometheus/ is NOT checked"
        )
        if ON_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_promtool(*args: str, cwd: Path) -> None:
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def test_prometheus_config_and_alerts_pass_promtool_and_their_unit_tests(tmp_path: Path):
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (master,) = config["scrape_configs"]
    assert master["static_configs"][0]["targets"] == ["master:8000"]
    assert master["metrics_path"] == "/metrics"
    assert master["authorization"]["credentials_file"] == "/run/secrets/trainfarm_metrics_token"
    # promtool checks that the token file exists: a copy of the folder with a stand-in for it.
    checked = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS, checked)
    token_file = tmp_path / "token"
    token_file.write_text("stand-in\n")
    text = (checked / "prometheus.yml").read_text()
    (checked / "prometheus.yml").write_text(
        text.replace("/run/secrets/trainfarm_metrics_token", str(token_file))
    )
    run_promtool("check", "config", "prometheus.yml", cwd=checked)
    run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    run_promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    # The dashboard's queries parse too: promtool reads each as a recording rule.
    queries = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(dashboard_exprs())
    ]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]})
    )
    run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


def test_every_alert_has_a_unit_test_that_fires_it():
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    silent = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]
    }
    names = {rule["alert"] for rule in rules}
    assert len(names) == 7  # the six, and a job holding idle GPUs (the usage rule's flag)
    assert fired == names and silent == names
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]


def test_grafana_is_provisioned_with_the_dashboards_data_source():
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prometheus,) = source["datasources"]
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "trainfarm.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {p["datasource"]["uid"] for p in panels} == {prometheus["uid"]}
    titles = {p["title"] for p in panels}
    for wanted in (
        "Jobs by status",
        "Queue wait",
        "Dispatch latency",
        "Nodes online",
        "GPU utilisation per node and GPU",
        "Devices in use per user",
    ):
        assert wanted in titles


# Metric names in PromQL ---------------------------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads, roughly: identifiers left once label values,
    matchers, ranges, durations, label lists and Grafana's `$variables` are cut, minus functions (followed by
    a parenthesis) and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\w+", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("(") or match.group().lower() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_names_are_read_from_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{q="x{y}"}[$__rate_interval]))) > 0.5 '
        'and on (node) b == 1 and on () (sum(c{d="e"} offset 5m) > 30 * 60) or vector(0)'
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert all(panel["targets"] for panel in panels)
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    return [rule["expr"] for rule in rules]


# The master's gauges ------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(master: MasterProcess) -> tuple[Samples, set[str]]:
    """The master's /metrics: each sample's value by name and labels, and every metric name it
    exports, those of families without samples yet (a histogram never observed) included."""
    answer = httpx.get(
        f"{master.url}/metrics", headers={"Authorization": f"Bearer {master.token}"}, timeout=30
    )
    answer.raise_for_status()
    samples: Samples = {}
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    for family in text_string_to_metric_families(answer.text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, names


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def with_labels(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    return [
        dict(key)
        for (sample, key) in samples
        if sample == name and set(labels.items()) <= set(dict(key).items())
    ]


def beat(broker: redis.Redis, worker: str, beat: dict[str, Any], silent_for: float = 0.0) -> None:
    """A worker's heartbeat as worker/heartbeat.py writes it, `silent_for` seconds old."""
    seconds, micros = broker.time()
    entry = {"worker": worker, "ts": seconds + micros / 1e6 - silent_for, **beat}
    broker.hset(NODES_KEY, worker, json.dumps(entry))


def gpu(index: int, used_gib: int, util: int | None, temperature: int | None) -> dict[str, Any]:
    return {
        "index": index,
        "name": "NVIDIA H100",
        "uuid": f"GPU-{index}",
        "memory_total": 80 * GIB,
        "memory_used": used_gib * GIB,
        "utilization_percent": util,
        "temperature_c": temperature,
    }


#: Two job GPUs (the second a MIG-like device without temperature) and one held back from jobs.
GPU_NODE = {
    "queues": ["gpu"],
    "concurrency": 2,
    "gpu_slots": [0, 1],
    "gpus": [gpu(0, 20, 37, 61), gpu(1, 1, 0, None), gpu(2, 0, None, 40)],
}


def test_the_master_exports_every_metric_the_dashboard_and_alerts_read_with_the_beats_values(
    master: MasterProcess, api: httpx.Client, settings: Settings
):
    broker = redis.Redis.from_url(settings.redis_connection_url())
    # A node silent for ten minutes: offline, and what it said of its GPUs is not exported.
    beat(broker, "old-node#1", GPU_NODE, silent_for=600)
    # Nothing serves the cpu queue: the job waits for admission.
    job = api.post("/jobs", json={"command": [sys.executable, "-c", "print(1)"], "queue": "cpu"})
    assert job.status_code == 201, job.text

    def current() -> tuple[Samples, set[str]] | None:
        beat(broker, "gpu-node#1", GPU_NODE)
        samples, names = scrape(master)
        ready = (
            value(samples, "trainfarm_node_online", node="gpu-node") == 1
            and value(samples, "trainfarm_node_online", node="old-node") == 0
            and value(samples, "trainfarm_queue_waiting_jobs", queue="cpu") == 1
        )
        return (samples, names) if ready else None

    samples, names = wait_for(current, timeout=30, what="the beats and the job in /metrics")
    for expr in dashboard_exprs() + alert_exprs():
        read = metric_names(expr)
        assert read, expr
        assert read <= names, f"{expr} reads {read - names}, which the master does not export"

    assert (
        value(samples, "trainfarm_gpu_utilization_ratio", node="gpu-node", gpu="0", name="NVIDIA H100")
        == 0.37
    )
    assert (
        value(samples, "trainfarm_gpu_utilization_ratio", node="gpu-node", gpu="1", name="NVIDIA H100") == 0
    )
    assert value(samples, "trainfarm_gpu_memory_used_bytes", node="gpu-node", gpu="0") == 20 * GIB
    assert value(samples, "trainfarm_gpu_memory_total_bytes", node="gpu-node", gpu="0") == 80 * GIB
    assert value(samples, "trainfarm_gpu_temperature_celsius", node="gpu-node", gpu="0") == 61
    # No reading, no sample: not a made-up 0.
    assert value(samples, "trainfarm_gpu_temperature_celsius", node="gpu-node", gpu="1") is None
    assert (
        value(samples, "trainfarm_gpu_utilization_ratio", node="gpu-node", gpu="2", name="NVIDIA H100")
        is None
    )
    assert [value(samples, "trainfarm_gpu_job_slot", node="gpu-node", gpu=g) for g in "012"] == [1, 1, 0]
    assert value(samples, "trainfarm_node_queue", node="gpu-node", queue="gpu") == 1
    for family in (
        "trainfarm_gpu_utilization_ratio",
        "trainfarm_gpu_memory_used_bytes",
        "trainfarm_node_queue",
    ):
        assert not with_labels(samples, family, node="old-node"), family
    assert value(samples, "trainfarm_queue_waiting_jobs", queue="gpu") == 0
    assert value(samples, "trainfarm_queue_oldest_wait_seconds", queue="gpu") == 0
    assert (value(samples, "trainfarm_queue_oldest_wait_seconds", queue="cpu") or 0) > 0
    assert value(samples, "trainfarm_jobs_ended_total", status="failed") == 0
    memory = broker.info("memory")
    assert value(samples, "trainfarm_redis_memory_max_bytes") == memory["maxmemory"]
    assert (value(samples, "trainfarm_redis_memory_used_bytes") or 0) > 0

    # The node stops beating: offline once node_offline_after has passed, its GPUs gone from the scrape.
    def offline() -> Samples | None:
        now, _ = scrape(master)
        return now if value(now, "trainfarm_node_online", node="gpu-node") == 0 else None

    after: Samples = wait_for(offline, timeout=30, what="gpu-node to be seen offline")
    assert not with_labels(after, "trainfarm_gpu_utilization_ratio", node="gpu-node")


# Without services -------------------------------------------------------------------------------


def collect(collector: AdmissionCollector) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_queue_waits_count_from_the_end_of_a_retry_backoff_and_devices_are_summed_per_user(engine: Engine):
    now = utcnow()
    hour = timedelta(hours=1)

    def job(queue: str, owner: str | None, status: JobStatus, devices: int = 1, attempts: int = 1) -> Job:
        return Job(queue=queue, owner=owner, status=status, devices=devices, attempts=attempts, spec={})

    with Session(engine) as session:
        waiting_gpu = job("gpu", "ann", JobStatus.QUEUED)
        backoff_gpu = job("gpu", "ann", JobStatus.QUEUED)
        retried_cpu = job("cpu", "bob", JobStatus.QUEUED, attempts=2)
        running_gpu = job("gpu", "mia", JobStatus.RUNNING, devices=2)
        running_cpu = job("cpu", None, JobStatus.RUNNING, devices=3)
        admitted_gpu = job("gpu", "ann", JobStatus.QUEUED)
        session.add_all([waiting_gpu, backoff_gpu, retried_cpu, running_gpu, running_cpu, admitted_gpu])
        session.flush()

        def attempt(of: Job, **fields: Any) -> JobAttempt:
            return JobAttempt(job_id=of.id, **{"number": 1, "created_at": now - 5 * hour, **fields})

        session.add_all(
            [
                attempt(waiting_gpu, created_at=now - hour),
                # Its backoff has not ended: it waits, but not for admission yet.
                attempt(backoff_gpu, not_before=now + hour),
                attempt(retried_cpu, status=JobStatus.FAILED),
                attempt(retried_cpu, number=2, created_at=now - 3 * hour, not_before=now - 2 * hour),
                attempt(running_gpu, status=JobStatus.RUNNING),
                attempt(running_cpu, status=JobStatus.RUNNING),
                attempt(admitted_gpu, admitted_at=now - hour),
            ]
        )
        session.commit()

    samples = collect(AdmissionCollector(engine))
    assert value(samples, "trainfarm_queue_waiting_jobs", queue="gpu") == 2
    assert value(samples, "trainfarm_queue_waiting_jobs", queue="cpu") == 1
    gpu_wait = value(samples, "trainfarm_queue_oldest_wait_seconds", queue="gpu") or 0
    cpu_wait = value(samples, "trainfarm_queue_oldest_wait_seconds", queue="cpu") or 0
    # Ages measured a moment after `now`: at least the hour, not the next one.
    assert 3600 <= gpu_wait < 2 * 3600
    assert 2 * 3600 <= cpu_wait < 3 * 3600
    assert value(samples, "trainfarm_user_running_devices", user="mia", queue="gpu") == 2
    assert value(samples, "trainfarm_user_running_devices", user="", queue="cpu") == 3
    assert len(with_labels(samples, "trainfarm_user_running_devices")) == 2


def test_admission_wait_and_dispatch_latency_are_observed_from_the_attempts_times():
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    start = utcnow()
    # A retry: it waited from the end of its backoff (3 s), not from its creation.
    attempt = JobAttempt(
        job_id=1,
        number=2,
        created_at=start,
        not_before=start + timedelta(seconds=3),
        admitted_at=start + timedelta(seconds=5),
        started_at=start + timedelta(seconds=12),
    )
    waits = sample("trainfarm_admission_wait_seconds_count", queue="gpu")
    waited = sample("trainfarm_admission_wait_seconds_sum", queue="gpu")
    starts = sample("trainfarm_dispatch_latency_seconds_count")
    latency = sample("trainfarm_dispatch_latency_seconds_sum")
    observe_admitted("gpu", attempt)
    observe_started(attempt)
    assert sample("trainfarm_admission_wait_seconds_count", queue="gpu") == waits + 1
    assert sample("trainfarm_admission_wait_seconds_sum", queue="gpu") == pytest.approx(waited + 2)
    assert sample("trainfarm_dispatch_latency_seconds_count") == starts + 1
    assert sample("trainfarm_dispatch_latency_seconds_sum") == pytest.approx(latency + 7)
    # Not admitted (a cancelled wait): nothing to observe.
    observe_started(JobAttempt(job_id=1, number=1, started_at=start))
    assert sample("trainfarm_dispatch_latency_seconds_count") == starts + 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_run_on_a_real_worker_is_counted_in_the_wait_and_dispatch_histograms(master, api, worker):
    """The admitter observes the job's wait for admission, the one door its start's dispatch latency."""
    job = api.post("/jobs", json={"command": [sys.executable, "-c", "print(1)"], "queue": "cpu"}).json()
    wait_for(
        lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded", timeout=90, what="the job"
    )
    samples, _ = scrape(master)
    assert value(samples, "trainfarm_admission_wait_seconds_count", queue="cpu") == 1.0
    assert value(samples, "trainfarm_dispatch_latency_seconds_count") == 1.0
