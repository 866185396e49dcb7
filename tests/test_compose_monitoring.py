"""docker-compose.yml's `monitoring` profile, as `docker-compose config` reads it: Prometheus and
Grafana start with the profile only, and the farm without it is the farm as before; Prometheus
scrapes the master over the compose network with the scrape token, a secret file the master reads
too; Grafana is provisioned from deploy/grafana/, with no anonymous access and no sign-up; nothing
is published beyond Grafana and Prometheus on loopback.

Each service's mounts are laid out in a folder as its container would see them (bind mounts at
their targets, secrets under /run/secrets), so promtool checks prometheus.yml as mounted, Grafana's
provisioning is read where Grafana reads it, and the master's settings read their secrets from
where compose puts them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings
from tests.test_deploy_config import COMPOSE, DUMMY, mounted_secrets, require_compose
from tests.test_monitoring import run_promtool

ROOT = COMPOSE.parent
DEPLOY = ROOT / "deploy"
#: The services of each profile; every other service starts with a plain `docker compose up -d`.
PROFILES = {"prometheus": ["monitoring"], "grafana": ["monitoring"], "worker": ["gpu"]}
#: Every port the farm publishes with all its profiles: (service, host address, port), "" being
#: every interface. Grafana is published as the MinIO console is; Prometheus, which has no login,
#: on loopback only.
PUBLISHED = {
    ("master", "", 8000),
    ("flower", "", 5555),
    ("minio", "", 9000),
    ("minio", "", 9001),
    ("grafana", "", 3000),
    ("prometheus", "127.0.0.1", 9090),
}
#: The secrets the monitoring profile adds, and who may read each.
READERS = {
    "trainfarm_metrics_token": {"master", "prometheus"},
    "grafana_admin_password": {"grafana"},
}


@pytest.fixture(scope="module")
def farm() -> dict[str, Any]:
    """docker-compose.yml with every profile, as compose resolves it (absolute host paths)."""
    command = [*require_compose(), "-f", str(COMPOSE), "--profile", "monitoring", "--profile", "gpu"]
    done = subprocess.run(
        [*command, "config"],
        env={"PATH": "/usr/bin:/bin", **DUMMY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def ports(service: dict[str, Any]) -> Iterator[tuple[str, int, int]]:
    """(host address, host port, container port) of each port, in the long or the short syntax
    (`[[host_ip:]published:]target[/protocol]`); a port without a host port is published on a
    random one, 0 here."""
    for port in service.get("ports", []):
        if isinstance(port, dict):
            yield port.get("host_ip", ""), int(port.get("published") or 0), int(port["target"])
            continue
        *host_side, target = str(port).split("/")[0].split(":")
        host, published = ["", ""][len(host_side) :] + host_side
        yield host, int(published or 0), int(target)


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """{container path: host path} of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "bind":
                mounts[volume["target"]] = Path(volume["source"])
        elif volume.startswith("/"):
            source, target = volume.split(":")[:2]
            mounts[target] = Path(source)
    return mounts


def named_volumes(service: dict[str, Any]) -> dict[str, str]:
    """{container path: volume name} of a service's named volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "volume":
                mounts[volume["target"]] = volume["source"]
        elif not volume.startswith("/"):
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in service["command"])


@pytest.fixture
def host_secrets(farm: dict[str, Any], tmp_path: Path) -> Path:
    """./secrets/ as the header of docker-compose.yml has it made: random hex, one file each."""
    folder = tmp_path / "host-secrets"
    folder.mkdir()
    for name, spec in farm["secrets"].items():
        # Each in ./secrets/ beside the compose file, under its own name.
        assert Path(spec["file"]) == ROOT / "secrets" / name, (name, spec)
        (folder / name).write_text(secrets.token_hex(32) + "\n")  # as `openssl rand -hex 32` writes it
    return folder


def container(farm: dict[str, Any], name: str, host_secrets: Path, root: Path) -> Path:
    """`root` laid out as service `name`'s container sees its bind mounts and secrets."""
    service = farm["services"][name]
    for target, source in binds(service).items():
        assert source.is_relative_to(ROOT) and source.exists(), (name, source)
        copy = root / target.lstrip("/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copyfile(source, copy)
    run_secrets = root / "run" / "secrets"
    run_secrets.mkdir(parents=True, exist_ok=True)
    for target, secret in mounted_secrets(service).items():
        shutil.copyfile(host_secrets / secret, run_secrets / target)
    return root


def test_monitoring_is_a_profile_and_the_farm_starts_without_it(farm):
    services = farm["services"]
    assert {name: service.get("profiles", []) for name, service in services.items()} == {
        name: PROFILES.get(name, []) for name in services
    }
    # A plain `up -d` starts what it started before: no service of it waits for a profile's.
    plain = {name for name in services if name not in PROFILES}
    for name in plain:
        assert set(services[name].get("depends_on", {})) <= plain, name
    for name in ("prometheus", "grafana"):
        assert set(named_volumes(services[name]).values()) <= set(farm["volumes"]), name


def test_nothing_is_published_beyond_what_the_file_chose(farm):
    services = farm["services"]
    published = {(name, host, port) for name, service in services.items() for host, port, _ in ports(service)}
    assert published == PUBLISHED
    # The host's network would publish every port the container listens on.
    assert not any("network_mode" in service for service in services.values())


def test_monitoring_mounts_the_files_the_swarm_stack_mounts(farm):
    """One kit, two deployments: each config file at the same path as in deploy/stack.yml."""
    stack = yaml.safe_load((DEPLOY / "stack.yml").read_text())
    for name in ("prometheus", "grafana"):
        configs = {
            entry["target"]: (DEPLOY / stack["configs"][entry["source"]]["file"]).resolve()
            for entry in stack["services"][name]["configs"]
        }
        assert binds(farm["services"][name]) == configs, name
        # The same secrets, under the same names (compose's are files in ./secrets/).
        assert mounted_secrets(farm["services"][name]) == {s: s for s in stack["services"][name]["secrets"]}
    # Its flags too: the same data path and retention on one host as on a swarm.
    assert flags(farm["services"]["prometheus"]) == flags(stack["services"]["prometheus"])


def test_the_profiles_secrets_reach_only_their_readers(farm):
    for secret, readers in READERS.items():
        holders = {
            name for name, service in farm["services"].items() if secret in mounted_secrets(service).values()
        }
        assert holders == readers, secret


def master_settings(farm: dict[str, Any], root: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the master's container starts with: its compose environment, its secrets."""
    for name in [n for n in os.environ if n.startswith("TRAINFARM_")]:
        monkeypatch.delenv(name)
    for name, value in farm["services"]["master"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    settings = Settings(_secrets_dir=root / "run" / "secrets")  # type: ignore[call-arg]
    settings.check_master()  # production: it would start
    return settings


def test_prometheus_scrapes_the_master_with_the_token_the_master_reads(
    farm, host_secrets, tmp_path, monkeypatch
):
    services = farm["services"]
    prometheus = container(farm, "prometheus", host_secrets, tmp_path / "prometheus")
    config_file = prometheus / flags(services["prometheus"])["config.file"].lstrip("/")
    assert config_file.read_bytes() == (DEPLOY / "prometheus" / "prometheus.yml").read_bytes()
    # Its data and how long it keeps it.
    assert flags(services["prometheus"])["storage.tsdb.path"] in named_volumes(services["prometheus"])
    assert flags(services["prometheus"])["storage.tsdb.retention.time"]
    # promtool reads the rule files beside the config and the token file, where the container has
    # them: the config's own absolute paths moved into the laid-out folder.
    text = config_file.read_text()
    config_file.write_text(text.replace("/run/secrets/", f"{prometheus}/run/secrets/"))
    run_promtool("check", "config", config_file.name, cwd=config_file.parent)

    master = master_settings(farm, container(farm, "master", host_secrets, tmp_path / "master"), monkeypatch)
    assert master.metrics_token is not None
    (job,) = yaml.safe_load(text)["scrape_configs"]
    sent = (prometheus / job["authorization"]["credentials_file"].lstrip("/")).read_text()
    assert sent.strip() == master.metrics_token.get_secret_value()
    # Over the compose network, to the port the master listens on, by a name it answers to.
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.rsplit(":", 1)
    assert host == "master" and host in master.allowed_hosts
    assert int(port) in {target for _, _, target in ports(services["master"])}


def test_grafana_is_provisioned_with_prometheus_and_closed_to_strangers(farm, host_secrets, tmp_path):
    services = farm["services"]
    grafana = container(farm, "grafana", host_secrets, tmp_path / "grafana")
    provisioning = grafana / "etc" / "grafana" / "provisioning"
    (datasources,) = (provisioning / "datasources").glob("*.yml")
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    url = urlsplit(source["url"])
    # Prometheus listens on its default port (no --web.listen-address) on the compose network.
    assert (url.hostname, url.port) == ("prometheus", 9090)
    assert "web.listen-address" not in flags(services["prometheus"])
    (dashboards,) = (provisioning / "dashboards").glob("*.yml")
    (provider,) = yaml.safe_load(dashboards.read_text())["providers"]
    found = grafana / provider["options"]["path"].lstrip("/") / "trainfarm.json"
    assert found.read_bytes() == (DEPLOY / "grafana" / "dashboards" / "trainfarm.json").read_bytes()
    # Its own data (users, the admin password once set) in a volume.
    assert "/var/lib/grafana" in named_volumes(services["grafana"])

    env = services["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env  # `docker inspect` would show it
    password = (grafana / env["GF_SECURITY_ADMIN_PASSWORD__FILE"].lstrip("/")).read_text()
    assert password == (host_secrets / "grafana_admin_password").read_text()
