"""The coordinator's TLS certificate: loaded from files, or made once (self-signed) and kept in the
data dir so its fingerprint stays the same across restarts and nodes' pins keep working."""
from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protocol.channel import fingerprint

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
FINGERPRINT_FILE = "tls.fingerprint"
CERT_NAME = "potluck-coordinator"  # pinning clients check this name, whatever the address they dial
VALID_DAYS = 3650


def _self_signed(hosts: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERT_NAME)])
    alt: list[x509.GeneralName] = [x509.DNSName(CERT_NAME)]
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_or_create(data_dir: Path, host: str, cert: Path | None = None, key: Path | None = None) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): the given files, else the data dir's, made on first use.
    The fingerprint is (re)written to DATA/tls.fingerprint either way."""
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    if cert is not None:
        cert_pem, key_pem = Path(cert).read_bytes(), Path(key).read_bytes()
    elif (data_dir / CERT_FILE).exists():
        cert_pem, key_pem = (data_dir / CERT_FILE).read_bytes(), (data_dir / KEY_FILE).read_bytes()
    else:
        hosts = [h for h in {host, "127.0.0.1", "localhost"} if h and h not in ("0.0.0.0", "::", "[::]")]
        cert_pem, key_pem = _self_signed(sorted(hosts))
        fd = os.open(data_dir / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        (data_dir / CERT_FILE).write_bytes(cert_pem)
    try:
        pin = fingerprint(cert_pem)
    except ValueError as exc:
        raise ValueError(f"the TLS certificate is not a PEM X.509 certificate: {exc}") from None
    (data_dir / FINGERPRINT_FILE).write_text(pin + "\n")
    return cert_pem, key_pem
