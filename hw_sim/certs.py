"""Self-signed OPC UA application certificates for the simulator, the tests and first setups.

OPC UA identifies an application by the URI in its certificate's subjectAltName, so every
certificate made here carries its application URI there (plus DNS names and 127.0.0.1, which
some stacks check against the endpoint host).  Certificates are self-signed (no CA): peers
trust them by pinning the certificate itself or by dropping it into a trust directory.

Generating an RSA-2048 key takes tens of milliseconds, so `ensure_certs` reuses the files it
finds in a directory when they are still valid for the requested URIs; tests can call it
freely.

    python -m hw_sim.certs DIR [--role client|server] [--uri URI] [--name NAME]

writes one certificate/key pair, e.g. the gateway's client certificate for a real server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_URI = "urn:edgeloop:hw_sim:opcua-server"
CLIENT_URI = "urn:edgeloop:gateway"
_VALID_DAYS = 3650
_MIN_REMAINING = dt.timedelta(days=1)  # regenerate a cached cert that expires sooner than this


@dataclass(frozen=True, slots=True)
class CertPair:
    """PEM certificate and PKCS#8 key of one application, and the URI its SAN carries."""

    cert: Path
    key: Path
    uri: str

    @property
    def sha256(self) -> str:
        """Fingerprint of the DER certificate, as users compare it (hex, colon separated)."""
        return fingerprint(self.cert.read_bytes())


@dataclass(frozen=True, slots=True)
class SimCerts:
    """The server and client pairs of one directory."""

    directory: Path
    server: CertPair
    client: CertPair


def fingerprint(cert_bytes: bytes) -> str:
    """SHA-256 fingerprint of a PEM or DER certificate, `AB:CD:...`."""
    der = _to_der(cert_bytes)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _to_der(cert_bytes: bytes) -> bytes:
    if cert_bytes.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert_bytes).public_bytes(serialization.Encoding.DER)
    return cert_bytes


def make_cert_pair(
    directory: str | Path,
    stem: str,
    uri: str,
    *,
    role: str,
    common_name: str | None = None,
    hostnames: tuple[str, ...] = (),
    days: int = _VALID_DAYS,
) -> CertPair:
    """Write `<stem>_cert.pem` and `<stem>_key.pem` (key mode 0600) and return their paths.

    `role` is "server" or "client": it sets the extended key usage peers check.
    """
    if role not in ("server", "client"):
        raise ValueError(f"role must be 'server' or 'client', not {role!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names = {"localhost", socket.gethostname(), *hostnames}
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    san += [x509.DNSName(h) for h in sorted(names) if h]
    san.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"edgeloop {stem}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        # OPC UA Part 6 6.2.2: a self-signed application certificate is its own issuer
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{stem}_cert.pem"
    key_path = directory / f"{stem}_key.pem"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertPair(cert_path, key_path, uri)


def _cached(directory: Path, stem: str, uri: str) -> CertPair | None:
    """The existing pair when its cert is readable, carries `uri` and is not about to expire."""
    cert_path, key_path = directory / f"{stem}_cert.pem", directory / f"{stem}_key.pem"
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound):
        return None
    if uri not in uris or cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < _MIN_REMAINING:
        return None
    return CertPair(cert_path, key_path, uri)


def ensure_pair(directory: str | Path, stem: str, uri: str, *, role: str) -> CertPair:
    """Reuse `<stem>_cert.pem`/`<stem>_key.pem` in `directory` if valid, else generate them."""
    directory = Path(directory)
    return _cached(directory, stem, uri) or make_cert_pair(directory, stem, uri, role=role)


def ensure_certs(
    directory: str | Path, *, server_uri: str = SERVER_URI, client_uri: str = CLIENT_URI
) -> SimCerts:
    """Server and client certificate/key pairs in `directory`, generated once and reused."""
    directory = Path(directory)
    return SimCerts(
        directory=directory,
        server=ensure_pair(directory, "server", server_uri, role="server"),
        client=ensure_pair(directory, "client", client_uri, role="client"),
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: write one self-signed application certificate and key and print the fingerprint."""
    p = argparse.ArgumentParser(prog="python -m hw_sim.certs", description=main.__doc__)
    p.add_argument("directory", type=Path)
    p.add_argument("--role", choices=("client", "server"), default="client")
    p.add_argument("--uri", help="application URI (default: the edgeloop gateway/sim URI)")
    p.add_argument("--name", default=None, help="file stem (default: the role)")
    p.add_argument("--hostname", action="append", default=[], help="extra DNS name for the SAN")
    args = p.parse_args(argv)
    uri = args.uri or (CLIENT_URI if args.role == "client" else SERVER_URI)
    pair = make_cert_pair(
        args.directory, args.name or args.role, uri, role=args.role, hostnames=tuple(args.hostname)
    )
    print(f"certificate: {pair.cert}\nprivate key: {pair.key}\napplication URI: {uri}")
    print(f"SHA-256 fingerprint: {pair.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
