"""Server-certificate checks for the OPC UA driver: pinning and trust directories.

asyncua, given a security policy but no server certificate, fetches the certificate from the
server's endpoint list and trusts it: trust on first use, with every use being the first.
The driver therefore decides which certificate it accepts before any secure channel opens:

* `server_certificate` (pinned): the endpoint must present exactly that certificate;
* `trust_dir`: the presented certificate must be one of the certificates in the directory
  (self-signed application certificates, the usual case) or be issued by one of them (a CA),
  and be within its validity period.

The approved certificate is then handed to asyncua, which encrypts the channel to its key and
checks the certificate in the CreateSession response against it, so a server that only
copied the certificate (without its private key) cannot complete the handshake either.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class CertificateRefused(Exception):
    """The server's certificate is not the pinned one / not trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """The client's certificate (DER), key bytes and the application URI from its SAN."""

    cert_der: bytes
    key_bytes: bytes
    key_is_pem: bool
    application_uri: str | None


def is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN")


def load_cert(path: str | Path) -> x509.Certificate:
    """A PEM or DER certificate file (format from the content, not the suffix)."""
    data = Path(path).read_bytes()
    if is_pem(data):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(der_bytes: bytes) -> str:
    """SHA-256 of the DER certificate, `AB:CD:...` as users compare it."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der_bytes).digest())


def first_cert(chain: bytes) -> bytes:
    """The leading certificate of a DER chain (servers may append their CA chain)."""
    if len(chain) < 4 or chain[0] != 0x30:
        return chain
    n = chain[1]
    if n < 0x80:
        return chain[: 2 + n]
    k = n & 0x7F
    length = int.from_bytes(chain[2 : 2 + k], "big")
    return chain[: 2 + k + length]


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def load_client_identity(cert_path: str | Path, key_path: str | Path) -> ClientIdentity:
    cert = load_cert(cert_path)
    key = Path(key_path).read_bytes()
    return ClientIdentity(der(cert), key, is_pem(key), application_uri(cert))


def _describe(cert: x509.Certificate) -> str:
    return f"subject {cert.subject.rfc4514_string()!r}, SHA-256 {fingerprint(der(cert))}"


def check_pinned(presented_der: bytes, pinned_path: str | Path) -> bytes:
    """The pinned certificate's DER if the server presents exactly it, else refuse."""
    pinned = der(load_cert(pinned_path))
    presented = first_cert(presented_der)
    if presented != pinned:
        shown = x509.load_der_x509_certificate(presented)
        raise CertificateRefused(
            f"server certificate does not match the pinned certificate {pinned_path} "
            f"(server presents {_describe(shown)}; pinned SHA-256 {fingerprint(pinned)})"
        )
    return pinned


def trusted_certs(trust_dir: str | Path) -> list[x509.Certificate]:
    d = Path(trust_dir)
    if not d.is_dir():
        raise CertificateRefused(f"trust_dir {d} is not a directory")
    out = []
    for f in sorted(d.iterdir()):
        if f.is_file() and f.suffix.lower() in CERT_SUFFIXES:
            try:
                out.append(load_cert(f))
            except ValueError as exc:
                raise CertificateRefused(f"trust_dir: cannot load {f}: {exc}") from exc
    return out


def check_trusted(presented_der: bytes, trust_dir: str | Path) -> bytes:
    """The presented certificate's DER if `trust_dir` trusts it, else refuse (with the reason)."""
    presented = first_cert(presented_der)
    cert = x509.load_der_x509_certificate(presented)
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateRefused(
            f"server certificate is outside its validity period "
            f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d}): "
            f"{_describe(cert)}"
        )
    trusted = trusted_certs(trust_dir)
    for t in trusted:
        if der(t) == presented:
            return presented
        if t.subject == cert.issuer and t != cert:
            try:
                cert.verify_directly_issued_by(t)
            except (InvalidSignature, ValueError, TypeError):
                continue
            return presented
    raise CertificateRefused(
        f"server certificate is not trusted: {_describe(cert)} is not in trust_dir "
        f"{trust_dir} ({len(trusted)} certificates) and not issued by one of them; if this "
        f"is the right server, copy its certificate into {trust_dir}"
    )
