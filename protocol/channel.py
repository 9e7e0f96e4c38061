"""Channels to a coordinator, one way for every client (node, TUI, admin, demo): plaintext, TLS
pinned to a certificate fingerprint, or TLS verified against a CA file.

Pinning works with the self-signed certificate `potluck coordinator serve --tls` makes: the client
fetches the server's certificate, checks its sha256 against the pin, then opens the gRPC channel
with that very certificate as its only root (and the certificate's own name as the target name),
so a server that later shows another certificate fails the TLS handshake.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

MAX_SEND_BYTES = 256 << 20  # the coordinator caps what it takes (16 MiB; 2 versions' worth in full mode)
MAX_RECEIVE_BYTES = 64 << 20  # a Watch snapshot lists every node; a large swarm's exceeds 16 MiB
FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
FETCH_TIMEOUT_S = 10.0


class ChannelError(ValueError):
    """The coordinator's identity cannot be established (wrong fingerprint, unreadable CA, ...)."""


def fingerprint(cert_pem: bytes) -> str:
    """`sha256:<hex>` of a certificate's DER bytes, the form `--fingerprint` takes."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def check_fingerprint(text: str) -> str:
    value = text.strip().lower()
    if not FINGERPRINT.match(value):
        raise ChannelError(f"fingerprint {text[:80]!r} is not of the form sha256:<64 hex digits>")
    return value


def certificate_name(cert_pem: bytes) -> str:
    """The DNS name a certificate is issued to (its first SAN DNS name, else its common name)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = names.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not common:
        raise ChannelError("the coordinator's certificate names no host (no SAN DNS name, no CN)")
    return str(common[0].value)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ChannelError(f"coordinator address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def fetch_certificate(address: str) -> bytes:
    """The PEM certificate the server at address presents (not verified: the caller pins it)."""
    try:
        return ssl.get_server_certificate(_split(address), timeout=FETCH_TIMEOUT_S).encode()
    except (OSError, ssl.SSLError) as exc:
        raise ChannelError(f"could not fetch the TLS certificate of {address}: {exc}") from exc


@dataclass(frozen=True)
class Security:
    """How to reach the coordinator: plaintext (neither set), a pinned fingerprint, or a CA file."""

    fingerprint: str | None = None
    ca: Path | None = None

    def __post_init__(self) -> None:
        if self.fingerprint and self.ca:
            raise ChannelError("give either --fingerprint or --ca, not both")
        if self.fingerprint:
            object.__setattr__(self, "fingerprint", check_fingerprint(self.fingerprint))

    @property
    def tls(self) -> bool:
        return bool(self.fingerprint or self.ca)

    def credentials(self, address: str) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
        """Channel credentials and the extra options (a target name override when pinning)."""
        if self.ca:
            try:
                return grpc.ssl_channel_credentials(root_certificates=Path(self.ca).read_bytes()), []
            except OSError as exc:
                raise ChannelError(f"cannot read CA file {self.ca}: {exc}") from exc
        pem = fetch_certificate(address)
        seen = fingerprint(pem)
        if not hmac.compare_digest(seen, self.fingerprint):
            raise ChannelError(f"the coordinator at {address} presents certificate {seen}, not the pinned "
                               f"{self.fingerprint}: refusing to connect (wrong address, or someone in between)")
        return (grpc.ssl_channel_credentials(root_certificates=pem),
                [("grpc.ssl_target_name_override", certificate_name(pem))])


PLAINTEXT = Security()


def _options(extra: list[tuple[str, str]]) -> list[tuple[str, object]]:
    return [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            ("grpc.max_send_message_length", MAX_SEND_BYTES), *extra]


def aio_channel(address: str, security: Security = PLAINTEXT) -> grpc.aio.Channel:
    """An asyncio channel (nodes, TUI, demo). Pinning fetches the certificate here, blocking briefly."""
    if not security.tls:
        return grpc.aio.insecure_channel(address, options=_options([]))
    credentials, extra = security.credentials(address)
    return grpc.aio.secure_channel(address, credentials, options=_options(extra))


def sync_channel(address: str, security: Security = PLAINTEXT) -> grpc.Channel:
    """A blocking channel (the admin command, tests)."""
    if not security.tls:
        return grpc.insecure_channel(address, options=_options([]))
    credentials, extra = security.credentials(address)
    return grpc.secure_channel(address, credentials, options=_options(extra))

