"""TLS on demand: check the configured certificate, or make a self-signed one for this machine to try it out."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from sensorhub.config import Settings
from sensorhub.errors import ConfigError
from sensorhub.i18n import N_

logger = logging.getLogger(__name__)

SELF_SIGNED_DAYS = 825  # the longest validity browsers accept for a server certificate


def check_tls_files(settings: Settings) -> None:
    """Raise ConfigError, in one line naming the setting, unless the certificate and key can be used together."""
    for value, setting in ((settings.tls_cert, "SENSORHUB_TLS_CERT"), (settings.tls_key, "SENSORHUB_TLS_KEY")):
        try:
            with open(value, "rb") as handle:
                handle.read(1)
        except OSError as err:
            raise ConfigError(N_("{setting}={value}: cannot read it ({reason})"), setting=setting, value=value,
                              reason=err.strerror) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as err:
        raise ConfigError(N_("SENSORHUB_TLS_CERT={cert} and SENSORHUB_TLS_KEY={key} are not a PEM certificate and "
                             "its private key ({reason})"), cert=settings.tls_cert, key=settings.tls_key,
                          reason=err.reason or err) from None


def machine_names() -> tuple[list[str], list[str]]:
    """This machine's DNS names and addresses (loopback and LAN), as boards and browsers may reach it."""
    names = {"localhost", socket.gethostname()}
    fqdn = socket.getfqdn()
    if fqdn and "." in fqdn:
        names.add(fqdn)
    addresses = {"127.0.0.1", "::1"}
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addresses.add(str(info[4][0]))
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this picks the LAN interface
            addresses.add(str(probe.getsockname()[0]))
        except OSError:
            pass
    return sorted(names), sorted(addresses)


def make_self_signed(cert: Path, key: Path, names: list[str], addresses: list[str],
                     days: int = SELF_SIGNED_DAYS) -> None:
    """Write a self-signed certificate for `names` and `addresses` and its private key (mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "sensorhub"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sensorhub (self-signed)")])
    alternatives: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternatives += [x509.IPAddress(ipaddress.ip_address(address.split("%")[0])) for address in addresses]
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_bytes = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    os.chmod(key, 0o600)
    cert.parent.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
