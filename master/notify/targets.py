"""Where a webhook may point: http(s) to the outside world, or `mailto:` when SMTP is configured.

Unless `webhook_allow_private` is on, a URL whose host is (or resolves to) a loopback, private,
link-local, multicast, reserved or unspecified address is refused: a member must not be able to
make the master send requests into the farm's own network (Redis, S3, a cloud metadata service).
It is checked when the webhook is made and again before every send, on the addresses the send
then connects to (`Target.pinned`), so a name that later resolves inside is still refused.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from urllib.parse import urlsplit

from shared.settings import Settings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: host, port -> the addresses it resolves to; `socket.getaddrinfo` in production.
Resolver = Callable[[str, int], list[str]]
MAILTO = "mailto:"


class TargetRefused(ValueError):
    """A URL the master will not send to; the message says why, without the URL itself."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise TargetRefused(f"its host does not resolve ({exc.__class__.__name__})") from None
    return [str(info[4][0]) for info in infos]


def is_internal(address: IpAddress) -> bool:
    """Loopback, private, link-local, multicast, reserved or unspecified (IPv4-mapped IPv6 too)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class Target:
    """A checked http(s) URL and, when the guard is on, the vetted address to connect to."""

    url: str
    host: str
    #: The address the send must use (None: resolve as usual; the guard is off).
    pinned: str | None


def email_address(url: str) -> str:
    """The address of a `mailto:` URL; refused unless it is one plain address."""
    address = url[len(MAILTO) :]
    _display_name, parsed = parseaddr(address)
    if not parsed or parsed != address or "@" not in parsed or any(c in address for c in ",;?\r\n "):
        raise TargetRefused("a mailto: URL takes one plain address, e.g. mailto:alice@example.com")
    return parsed


def check_url(url: str, settings: Settings, resolve: Resolver = system_resolver) -> Target | None:
    """The target for an http(s) URL, or None for a valid `mailto:` one; TargetRefused otherwise."""
    if url.lower().startswith(MAILTO):
        if settings.smtp_host is None:
            raise TargetRefused("email is not configured on this farm (TRAINFARM_SMTP_HOST is unset)")
        email_address(url)
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise TargetRefused("only http://, https:// and mailto: URLs are allowed")
    host = parts.hostname
    if not host:
        raise TargetRefused("the URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("credentials in the URL are not allowed (put them in the path or use the secret)")
    if settings.webhook_allow_private:
        return Target(url, host, None)
    return Target(url, host, vetted_address(host, port, resolve))


def vetted_address(host: str, port: int, resolve: Resolver = system_resolver) -> str:
    """The first address `host` resolves to, if none of them is internal."""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(host, port)]
    if not addresses:
        raise TargetRefused("its host does not resolve")
    for address in addresses:
        if is_internal(address):
            raise TargetRefused(
                "it points inside the farm's network (a loopback, private, link-local or reserved "
                "address); an admin may allow that with TRAINFARM_WEBHOOK_ALLOW_PRIVATE=true"
            )
    return str(addresses[0])
