"""A private rabbitmq-server on 127.0.0.1, for the tests and the bench: Celery's task queues on
RabbitMQ, with a vhost and a user of their own.

Everything it needs is under its data dir and on ports of its own, so it never meets a RabbitMQ
the machine already runs: its own Erlang port mapper (epmd) on its own port, its node name, AMQP and
distribution ports, cookie (`HOME`), config, database, plugins file and logs. The user, its
password and the vhost come from a definitions file read at boot, so no `rabbitmqctl` (an Erlang VM
start each) is needed; the server is ready once that user can open its vhost.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from urllib.parse import quote

from kombu import Connection

from shared.private_files import write_private
from trainfarm.services.process import ManagedProcess, free_ports
from trainfarm.services.tls import TlsFiles

#: Where Debian's package puts the real scripts; /usr/sbin/rabbitmq-server is a wrapper that
#: switches to the `rabbitmq` user and the machine-wide node's directories.
DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")


def find_rabbitmq_server() -> str | None:
    """The rabbitmq-server script to run directly, or None when RabbitMQ is not installed."""
    debian = DEBIAN_SCRIPTS / "rabbitmq-server"
    if debian.is_file():
        return str(debian)
    on_path = shutil.which("rabbitmq-server")
    # Anything but Debian's su-wrapper: a generic-unix or Homebrew install runs as it is.
    if on_path and Path(on_path).resolve().parent != Path("/usr/sbin"):
        return on_path
    return None


def find_epmd() -> str | None:
    on_path = shutil.which("epmd")
    if on_path:
        return on_path
    found = sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))
    return str(found[-1]) if found else None


def unavailable_reason() -> str | None:
    """Why no private RabbitMQ can start here, or None."""
    if find_rabbitmq_server() is None:
        return "rabbitmq-server not found (Debian: apt-get install rabbitmq-server)"
    if find_epmd() is None:
        return "epmd (Erlang) not found"
    return None


def password_hash(password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64 of a 4-byte salt and SHA-256(salt + password)."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Epmd(ManagedProcess):
    """The Erlang port mapper in the foreground, in our process group: one that Erlang starts
    itself daemonizes and would outlive the server."""

    name = "epmd"
    ready_timeout = 10.0

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir)
        self.port = port
        binary = find_epmd()
        if binary is None:
            raise RuntimeError("epmd (Erlang) not found")
        self.binary = binary

    def _command(self) -> list[str]:
        return [self.binary, "-port", str(self.port), "-address", "127.0.0.1"]

    def is_ready(self) -> bool:
        return _port_open(self.port)


class RabbitMQServer(ManagedProcess):
    """rabbitmq-server bound to 127.0.0.1, its files in `data_dir`.

    :param data_dir: config, definitions, database (`mnesia/`), cookie (`home/`) and logs.
    :param user: the user made at boot, with every right on `vhost` only.
    :param password: its password; a random one when omitted.
    :param vhost: the vhost made at boot.
    :param consumer_timeout: milliseconds RabbitMQ lets a delivery stay unacknowledged before it
        closes the channel; None: RabbitMQ's default (30 minutes). A short one is checked every
        `channel_tick` ms (RabbitMQ's own tick is a minute).
    :param tls: the server's certificate, key and CA; given, it speaks only TLS (`amqps://`).
    """

    name = "rabbitmq"
    ready_timeout = 90.0
    stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        user: str = "trainfarm",
        password: str | None = None,
        vhost: str = "trainfarm",
        consumer_timeout: int | None = None,
        channel_tick: int = 1000,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(data_dir)
        binary = find_rabbitmq_server()
        if binary is None:
            raise RuntimeError(unavailable_reason() or "rabbitmq-server not found")
        self.binary = binary
        self.user, self.vhost = user, vhost
        self.password = password or secrets.token_urlsafe(16)
        self.consumer_timeout, self.channel_tick, self.tls = consumer_timeout, channel_tick, tls
        self.port, self.dist_port, epmd_port = free_ports(3)
        self.node = f"trainfarm{self.port}@localhost"
        self.epmd = Epmd(self.data_dir, epmd_port)

    @property
    def url(self) -> str:
        """`amqp://user:pw@127.0.0.1:port/vhost` (`amqps://` under TLS)."""
        scheme = "amqps" if self.tls else "amqp"
        auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{scheme}://{auth}@127.0.0.1:{self.port}/{quote(self.vhost, safe='')}"

    def _config(self) -> list[str]:
        listener = f"127.0.0.1:{self.port}"
        lines = [
            f"load_definitions = {(self.data_dir / 'definitions.json').resolve()}",
            "log.console = true",
            "log.console.level = warning",
            "log.file = false",
        ]
        if self.tls is None:
            lines.append(f"listeners.tcp.default = {listener}")
        else:
            lines += [
                "listeners.tcp = none",
                f"listeners.ssl.default = {listener}",
                f"ssl_options.cacertfile = {self.tls.ca_file.resolve()}",
                f"ssl_options.certfile = {self.tls.cert_file.resolve()}",
                f"ssl_options.keyfile = {self.tls.key_file.resolve()}",
                "ssl_options.verify = verify_none",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        if self.consumer_timeout is not None:
            lines.append(f"consumer_timeout = {self.consumer_timeout}")
        return lines

    def _definitions(self) -> dict[str, object]:
        return {
            "users": [
                {
                    "name": self.user,
                    "password_hash": password_hash(self.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": [],
                }
            ],
            "vhosts": [{"name": self.vhost}],
            "permissions": [
                {"user": self.user, "vhost": self.vhost, "configure": ".*", "write": ".*", "read": ".*"}
            ],
        }

    def _prepare(self) -> None:
        if not self.epmd.running:
            self.epmd.start()
        write_private(self.data_dir / "definitions.json", json.dumps(self._definitions()))
        write_private(self.data_dir / "rabbitmq.conf", "\n".join(self._config()) + "\n")
        # The tick at which channels check the consumer timeout: not in rabbitmq.conf's schema.
        write_private(
            self.data_dir / "advanced.config",
            f"[{{rabbit, [{{channel_tick_interval, {self.channel_tick}}}]}}].\n",
        )
        write_private(self.data_dir / "enabled_plugins", "[].\n")
        write_private(self.data_dir / "rabbitmq-env.conf", "")  # not the machine's /etc/rabbitmq one
        cookie = self.data_dir / "home" / ".erlang.cookie"
        if not cookie.exists():
            write_private(cookie, secrets.token_hex(20))

    def _env(self) -> dict[str, str]:
        # The machine's RabbitMQ and Erlang settings stay out: this node is configured only here.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self.data_dir.resolve()
        env |= {
            "HOME": str(d / "home"),
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd.port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            # The distribution listens on loopback only; epmd is ours and already running.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false",
        }
        return env

    def _command(self) -> list[str]:
        return [self.binary]

    def connection(self) -> Connection:
        """A kombu connection (not yet open) to this server's vhost as its user."""
        ssl: dict[str, object] | bool = False
        if self.tls is not None:
            ssl = {"ca_certs": str(self.tls.ca_file), "server_hostname": None}
        return Connection(self.url, ssl=ssl, connect_timeout=2)

    def is_ready(self) -> bool:
        if not _port_open(self.port):
            return False
        with self.connection() as connection:
            try:
                connection.connect()
            except (OSError, *connection.connection_errors):  # booting, or the definitions not in yet
                return False
        return True

    def delete_queues(self, names: list[str]) -> None:
        """Remove queues (and what they hold), so a test starts from none."""
        with self.connection() as connection:
            channel = connection.default_channel
            for name in names:
                channel.queue_delete(name)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self.epmd.stop()
