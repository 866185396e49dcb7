"""A private certificate authority with a server and a client certificate, for a TLS Redis on this
machine (the tests) or a small lab farm that wants self-signed certificates."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.private_files import write_private

#: Names the server certificate is valid for unless told otherwise: a farm on this machine.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """One side's certificate and key, and the CA it trusts for the other side."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Certificates:
    server: TlsFiles
    client: TlsFiles


def make_certificates(
    directory: Path, server_names: tuple[str, ...] = LOCAL_NAMES, days: int = 825
) -> Certificates:
    """Write `ca.crt`, `server.{crt,key}` and `client.{crt,key}` into `directory` (keys 0600).

    The server certificate is valid for `server_names` (host names or IP addresses) and may also
    serve as a client certificate, so a server can check itself (RedisServer.is_ready does).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "trainfarm private CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        stem: str, common_name: str, usages: list[x509.ObjectIdentifier], names: tuple[str, ...]
    ) -> TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, ca_name, key, days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        files = TlsFiles(ca_file, directory / f"{stem}.crt", directory / f"{stem}.key")
        files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(files.key_file, key)
        return files

    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return Certificates(
        server=issue("server", server_names[0] if server_names else "server", both, server_names),
        client=issue("client", "trainfarm client", [ExtendedKeyUsageOID.CLIENT_AUTH], ()),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew between machines
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)
