"""deploy/stack.yml, alone and with deploy/stack.rabbitmq.yml and deploy/stack.remote.yml, as the
real `docker stack config` reads and merges them: every password and key a Docker secret, declared
and mounted where it is read; stateful services pinned to labelled nodes; health checks, restart and
update policies; one encrypted overlay network; nothing published but the master, Flower, the
consoles and TLS ports for workers outside the swarm. Then a real swarm manager (the private test
engine, a one-node swarm for one test) takes the whole stack and an upgrade of it: it checks what
the client does not (constraint syntax, secrets and configs that exist, the network's options).

`docker stack config` is the CLI's own check and needs no daemon; it came with Docker 23 (Debian
12's docker.io 20.10 CLI lacks it, its dockerd serves the swarm fine).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings
from tests.conftest import wait_for
from tests.test_deploy_config import worker_policy as compose_worker_policy
from trainfarm.services.docker_engine import DockerEngine

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
STACK, RABBITMQ, REMOTE = DEPLOY / "stack.yml", DEPLOY / "stack.rabbitmq.yml", DEPLOY / "stack.remote.yml"
#: What `docker stack deploy` is run with in each documented way.
COMBINATIONS = {
    "redis-broker": [STACK],
    "rabbitmq": [STACK, RABBITMQ],
    "remote-workers": [STACK, RABBITMQ, REMOTE],
}
#: The one variable the stack requires (the rest have defaults).
VARIABLES = {"TRAINFARM_MASTER_IMAGE": "registry.lab.example/trainfarm-master:1.0"}

#: What may be published: the master, Flower, the consoles...
CONSOLES = {("master", 8000), ("flower", 5555), ("minio", 9001), ("grafana", 3000), ("rabbitmq", 15672)}
#: ...and TLS ports for workers outside the swarm, each with the flag that makes it TLS.
TLS_PORTS = {("redis", 6380): "--tls-port 6380", ("rabbitmq", 5671): "listeners.ssl.default = 5671"}
#: Stateful services and the node label each is pinned to.
PINNED = {
    "postgres": "trainfarm.db",
    "redis": "trainfarm.db",
    "rabbitmq": "trainfarm.db",
    "minio": "trainfarm.storage",
    "prometheus": "trainfarm.monitoring",
    "grafana": "trainfarm.monitoring",
}
#: Services that run once and exit: no health check.
ONE_SHOT = {"minio-init"}
#: Environment names that would hold a password or key; `*_FILE` names point at a file instead.
SECRET_NAME = re.compile(r"PASSWORD|PASS\b|SECRET|TOKEN|_KEY\b|BASIC_AUTH")
NOT_SECRET = {"TRAINFARM_S3_ACCESS_KEY", "TRAINFARM_SIGNING_PUBLIC_KEY"}
#: Flower's one placeholder: it reads no S3, the production check only wants some value.
PLACEHOLDERS = {("flower", "TRAINFARM_S3_SECRET_KEY"): "unused-by-flower"}
PASSWORD_IN_URL = re.compile(r"://[^/@\s]*:[^/@\s]+@")
SECRET_PATH = re.compile(r"/run/secrets/([A-Za-z0-9_.-]+)")


@lru_cache
def docker_cli_problem() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI (scripts/bootstrap installs docker.io)"
    probe = [docker, "stack", "config", "-c", "-"]  # an older CLI prints its help for any of this
    if subprocess.run(probe, input=b"version: '3.8'\nservices: {}\n", capture_output=True).returncode != 0:
        return f"{docker} has no `docker stack config` (Docker 23 or newer has it)"
    return None


def docker_cli() -> str:
    problem = docker_cli_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(f"LOUD SKIP: {problem}; deploy/stack*.yml were not validated")
    return shutil.which("docker") or "docker"


def stack_config(*files: Path, variables: Mapping[str, str] = VARIABLES) -> subprocess.CompletedProcess[str]:
    """`docker stack config` of `files`, merged in order, with only `variables` set."""
    command = [docker_cli(), "stack", "config"]
    for path in files:
        command += ["-c", str(path)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(command, env={**env, **variables}, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def stacks() -> dict[str, dict[str, Any]]:
    """Each combination as `docker stack config` prints it, read back."""
    merged = {}
    for name, files in COMBINATIONS.items():
        done = stack_config(*files)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        merged[name] = yaml.safe_load(done.stdout)
    return merged


def mounted(service: Mapping[str, Any]) -> dict[str, str]:
    """{target in /run/secrets: secret} of a service."""
    return {entry.get("target") or entry["source"]: entry["source"] for entry in service.get("secrets", [])}


def published(stack: Mapping[str, Any]) -> set[tuple[str, int]]:
    return {
        (name, int(port["target"]))
        for name, service in stack["services"].items()
        for port in service.get("ports", [])
        if port.get("published")
    }


def service_text(service: Mapping[str, Any]) -> str:
    return json.dumps(service)


def test_the_stack_needs_the_master_image():
    refused = stack_config(STACK, variables={})
    assert refused.returncode != 0 and "TRAINFARM_MASTER_IMAGE" in refused.stderr


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_password_and_key_is_a_docker_secret(stacks, combination):
    stack = stacks[combination]
    declared = stack["secrets"]
    for name, service in stack["services"].items():
        secrets = mounted(service)
        # Made beforehand with `docker secret create`, never a file beside the stack.
        assert all(declared[source].get("external") for source in secrets.values()), (name, secrets)
        # Whatever reads /run/secrets/X (a command, a health check, a *_FILE variable) has X mounted.
        assert set(SECRET_PATH.findall(service_text(service))) <= set(secrets), name
        for key, value in service.get("environment", {}).items():
            value = "" if value is None else str(value)
            assert not PASSWORD_IN_URL.search(value), (name, key)
            if key.endswith("_FILE"):
                # A path in /run/secrets, or MinIO's bare secret name.
                assert SECRET_PATH.sub(r"\1", value) in secrets, (name, key, value)
            elif SECRET_NAME.search(key) and key not in NOT_SECRET:
                assert PLACEHOLDERS.get((name, key)) == value, f"{name}: {key} is a literal secret"
    # The settings read these from /run/secrets as `trainfarm_<setting>` files.
    master = mounted(stack["services"]["master"])
    settings = {target.removeprefix("trainfarm_") for target in master if target.startswith("trainfarm_")}
    assert settings <= set(Settings.model_fields), settings - set(Settings.model_fields)
    assert {
        "database_url",
        "s3_secret_key",
        "redis_password",
        "session_secret",
        "signing_key",
        "metrics_token",
    } <= settings
    assert master["trainfarm_s3_secret_key"] == "s3_master_secret_key"
    # MinIO's root password and the users' keys are for MinIO and minio-init alone.
    for name, service in stack["services"].items():
        if {"minio_root_password", "s3_worker_secret_key"} & set(mounted(service).values()):
            assert name in ("minio", "minio-init"), name


def test_prometheus_reads_the_scrape_token_the_master_checks(stacks):
    prometheus = stacks["redis-broker"]["services"]["prometheus"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    files = {job["authorization"]["credentials_file"] for job in scrape["scrape_configs"]}
    assert files == {"/run/secrets/trainfarm_metrics_token"}
    assert mounted(prometheus)["trainfarm_metrics_token"] == "trainfarm_metrics_token"


def test_grafana_finds_its_dashboard_and_prometheus(stacks):
    stack = stacks["redis-broker"]
    grafana = stack["services"]["grafana"]
    targets = {entry["source"]: entry["target"] for entry in grafana["configs"]}
    providers = yaml.safe_load(Path(stack["configs"]["grafana_dashboards"]["file"]).read_text())
    paths = {provider["options"]["path"] for provider in providers["providers"]}
    assert paths == {str(Path(targets["grafana_dashboard_trainfarm"]).parent)}
    assert targets["grafana_dashboards"].startswith("/etc/grafana/provisioning/dashboards/")
    assert targets["grafana_datasource"].startswith("/etc/grafana/provisioning/datasources/")
    sources = yaml.safe_load(Path(stack["configs"]["grafana_datasource"]["file"]).read_text())
    hosts = {urlsplit(source["url"]).hostname for source in sources["datasources"]}
    assert hosts == {"prometheus"} and "prometheus" in stack["services"]


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_stateful_services_are_pinned_to_labelled_nodes(stacks, combination):
    for name, service in stacks[combination]["services"].items():
        constraints = service.get("deploy", {}).get("placement", {}).get("constraints", [])
        has_volume = any(volume.get("type") == "volume" for volume in service.get("volumes", []))
        assert has_volume == (name in PINNED), name
        if name in PINNED:
            assert f"node.labels.{PINNED[name]} == true" in constraints, (name, constraints)


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_services_have_health_checks_and_restart_and_update_policies(stacks, combination):
    for name, service in stacks[combination]["services"].items():
        deploy = service.get("deploy", {})
        assert deploy.get("restart_policy", {}).get("condition") in ("any", "on-failure"), name
        if name in ONE_SHOT:
            assert deploy["restart_policy"]["condition"] == "on-failure", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        update = deploy.get("update_config", {})
        assert update.get("failure_action") == "rollback" and deploy.get("rollback_config"), name
        if name in PINNED or name == "master":
            # Two tasks on one volume (or two masters' loops) must never overlap.
            assert update.get("order") == "stop-first", name


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_only_the_master_flower_and_consoles_publish_ports(stacks, combination):
    stack = stacks[combination]
    ports = published(stack)
    assert ports <= CONSOLES | set(TLS_PORTS), ports - CONSOLES - set(TLS_PORTS)
    for (name, port), flag in TLS_PORTS.items():
        if (name, port) in ports:  # a TLS port, so only with the TLS listener switched on
            assert flag in service_text(stack["services"][name]), (name, port)
    if combination == "redis-broker":
        assert ports == {("master", 8000), ("flower", 5555), ("minio", 9001), ("grafana", 3000)}
    if combination == "remote-workers":
        assert set(TLS_PORTS) <= ports


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_services_share_one_encrypted_overlay_network(stacks, combination):
    stack = stacks[combination]
    assert set(stack["networks"]) == {"farm"}
    farm = stack["networks"]["farm"]
    assert farm["driver"] == "overlay" and "encrypted" in farm.get("driver_opts", {}), farm
    for name, service in stack["services"].items():
        assert set(service.get("networks", {})) == {"farm"}, name


def test_the_rabbitmq_file_moves_celerys_queues_to_rabbitmq(stacks):
    plain, stack = stacks["redis-broker"]["services"], stacks["rabbitmq"]["services"]
    for name in ("master", "flower"):
        env = stack[name]["environment"]
        url = urlsplit(env["TRAINFARM_BROKER_URL"])
        assert (url.scheme, url.username, url.password, url.hostname, url.port, url.path) == (
            "amqp",
            "trainfarm",
            None,  # the password is the broker_password secret
            "rabbitmq",
            5672,
            "/trainfarm",
        )
        assert mounted(stack[name])["trainfarm_broker_password"] == "trainfarm_broker_password"
        # Merged over the base file, not in place of it; plain AMQP allowed by name on the
        # encrypted overlay, as Redis (and S3) already were, so production starts.
        allowed = json.loads(env["TRAINFARM_ALLOW_INSECURE"])
        assert set(allowed) == {*json.loads(plain[name]["environment"]["TRAINFARM_ALLOW_INSECURE"]), "broker"}
        production = {k: v for k, v in env.items() if k != "TRAINFARM_ALLOW_INSECURE"}
        assert (
            production.items()
            >= {
                k: v for k, v in plain[name]["environment"].items() if k != "TRAINFARM_ALLOW_INSECURE"
            }.items()
        )
        assert mounted(stack[name]).items() >= mounted(plain[name]).items()
        assert "TRAINFARM_BROKER_URL" not in plain[name]["environment"]
    assert {"broker_url", "broker_password"} <= set(Settings.model_fields)
    rabbitmq = stack["rabbitmq"]
    script = service_text(rabbitmq)
    for line in (
        "default_vhost = trainfarm",
        "default_user = trainfarm",
        "/run/secrets/trainfarm_broker_password",
    ):
        assert line in script, line
    assert rabbitmq["hostname"] == "rabbitmq"  # its data dir is named after it


def test_minio_init_makes_the_compose_files_users_and_policies(stacks):
    stack = stacks["redis-broker"]
    init = stack["services"]["minio-init"]
    targets = {entry["source"]: entry["target"] for entry in init["configs"]}
    files = {name: Path(spec["file"]) for name, spec in stack["configs"].items()}
    script = files["minio_init"].read_text()
    for who in ("master", "worker"):
        policy = targets[f"minio_{who}_policy"]
        assert policy == f"/etc/trainfarm/minio/trainfarm-{who}.json"
    # init.sh reads the policies where they are mounted, and each user's key from its secret.
    assert "policies=/etc/trainfarm/minio" in script and "/run/secrets/s3_${who}_secret_key" in script
    assert init["entrypoint"] == ["sh", targets["minio_init"]]
    # The same policies as docker-compose.yml's minio-init: one farm, one set of rights.
    assert json.loads(files["minio_worker_policy"].read_text()) == compose_worker_policy()
    master_policy = json.loads(files["minio_master_policy"].read_text())
    assert master_policy["Statement"] == [
        {
            "Effect": "Allow",
            "Action": ["s3:*"],
            "Resource": ["arn:aws:s3:::trainfarm", "arn:aws:s3:::trainfarm/*"],
        }
    ]


def test_every_config_file_exists(stacks):
    for combination, stack in stacks.items():
        for name, spec in stack.get("configs", {}).items():
            assert Path(spec["file"]).is_file(), (combination, name, spec["file"])


def docker_on(
    engine: DockerEngine, *args: str, stdin: str | None = None, variables: Mapping[str, str] = VARIABLES
) -> str:
    """The docker CLI against `engine`, with only `variables` set; a refusal fails the test."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    done = subprocess.run(
        [docker_cli(), *args],
        env={**env, **variables, "DOCKER_HOST": engine.url},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done.stdout


def try_docker_on(engine: DockerEngine, *args: str) -> bool:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": engine.url}
    return subprocess.run([docker_cli(), *args], env=env, capture_output=True, timeout=60).returncode == 0


@pytest.fixture
def swarm(docker_engine: DockerEngine) -> Iterator[DockerEngine]:
    """The session's private engine as a one-node swarm, for this test only. The node is drained:
    the manager checks and keeps every service spec but schedules no task, so nothing is pulled or
    started and no ingress sandbox is made. Afterwards it leaves the swarm and removes the bridge
    that swarm mode made on the host."""
    docker_on(docker_engine, "swarm", "init", "--advertise-addr", "127.0.0.1", "--listen-addr", "127.0.0.1:0")
    try:
        node = docker_on(docker_engine, "info", "--format", "{{.Swarm.NodeID}}").strip()
        docker_on(docker_engine, "node", "update", "--availability", "drain", node)
        yield docker_engine
    finally:
        docker_on(docker_engine, "swarm", "leave", "--force")
        if docker_on(docker_engine, "network", "ls", "-q", "--filter", "name=^docker_gwbridge$").strip():
            wait_for(
                lambda: try_docker_on(docker_engine, "network", "rm", "docker_gwbridge"),
                timeout=30,
                what="docker_gwbridge removed",
            )


def test_a_swarm_manager_accepts_the_stack_and_its_upgrade(stacks, swarm):
    stack = stacks["remote-workers"]
    for name in stack["secrets"]:
        docker_on(swarm, "secret", "create", name, "-", stdin=f"dummy {name} value 0123456789abcdef")
    files = [arg for path in COMBINATIONS["remote-workers"] for arg in ("-c", str(path))]
    # No registry here, and none needed: the manager checks and stores the specs, runs no task.
    docker_on(swarm, "stack", "deploy", "--resolve-image", "never", *files, "trainfarm")
    with swarm.client().api as api:
        specs = {
            service["Spec"]["Name"].removeprefix("trainfarm_"): service["Spec"] for service in api.services()
        }
        assert set(specs) == set(stack["services"])
        for name, spec in specs.items():
            task = spec["TaskTemplate"]
            targets = {secret["File"]["Name"] for secret in task["ContainerSpec"].get("Secrets", [])}
            assert targets == set(mounted(stack["services"][name])), name
            constraints = task.get("Placement", {}).get("Constraints", [])
            wanted = stack["services"][name].get("deploy", {}).get("placement", {}).get("constraints", [])
            assert constraints == wanted, name
        ports = {
            (name, port["TargetPort"])
            for name, spec in specs.items()
            for port in spec.get("EndpointSpec", {}).get("Ports", [])
        }
        assert ports == published(stack)
        farm = api.inspect_network("trainfarm_farm")
        assert farm["Attachable"] and "encrypted" in farm["Options"], farm
        # An upgrade is the same deploy with a new image: the master's spec moves to it.
        upgraded = {**VARIABLES, "TRAINFARM_MASTER_IMAGE": "registry.lab.example/trainfarm-master:1.1"}
        docker_on(
            swarm, "stack", "deploy", "--resolve-image", "never", *files, "trainfarm", variables=upgraded
        )
        master = api.inspect_service("trainfarm_master")["Spec"]["TaskTemplate"]["ContainerSpec"]
        assert master["Image"] == upgraded["TRAINFARM_MASTER_IMAGE"]
    docker_on(swarm, "stack", "rm", "trainfarm")
