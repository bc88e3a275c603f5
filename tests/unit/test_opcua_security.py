"""Certificate generation (hw_sim.certs) and the driver's server-certificate decisions."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drivers import opcua_security as sec
from hw_sim import certs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    sim = certs.ensure_certs(d)
    other = certs.ensure_pair(d / "other", "server", certs.SERVER_URI, role="server")
    return sim, other


def _der(path) -> bytes:
    return sec.der(sec.load_cert(path))


def test_generated_certs_carry_uri_usage_and_private_key_mode(pairs):
    sim, _ = pairs
    for pair, usage in ((sim.server, ExtendedKeyUsageOID.SERVER_AUTH),
                        (sim.client, ExtendedKeyUsageOID.CLIENT_AUTH)):  # fmt: skip
        cert = sec.load_cert(pair.cert)
        assert sec.application_uri(cert) == pair.uri
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert usage in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and ku.key_encipherment and ku.data_encipherment
        assert cert.public_key().key_size == 2048
        assert os.stat(pair.key).st_mode & 0o077 == 0  # key readable by the owner only
    assert sim.server.uri == certs.SERVER_URI and sim.client.uri == certs.CLIENT_URI


def test_certs_are_cached_per_directory_and_regenerated_for_another_uri(pairs):
    sim, _ = pairs
    again = certs.ensure_certs(sim.directory)
    assert again.server.cert.read_bytes() == sim.server.cert.read_bytes()
    assert again.client.sha256 == sim.client.sha256
    other_dir = sim.directory / "uri-change"
    first = certs.ensure_pair(other_dir, "client", "urn:a", role="client")
    fp = first.sha256
    assert certs.ensure_pair(other_dir, "client", "urn:a", role="client").sha256 == fp
    second = certs.ensure_pair(other_dir, "client", "urn:b", role="client")
    assert second.sha256 != fp and sec.application_uri(sec.load_cert(second.cert)) == "urn:b"


def test_fingerprint_is_the_same_for_pem_and_der(pairs):
    sim, _ = pairs
    pem = sim.server.cert.read_bytes()
    der = _der(sim.server.cert)
    assert certs.fingerprint(pem) == certs.fingerprint(der) == sec.fingerprint(der)
    assert len(sec.fingerprint(der).split(":")) == 32


def test_pinned_certificate_must_match_exactly(pairs, tmp_path):
    sim, other = pairs
    presented = _der(sim.server.cert)
    assert sec.check_pinned(presented, sim.server.cert) == presented
    der_file = tmp_path / "pinned.der"  # the pin may be DER, whatever its suffix
    der_file.write_bytes(presented)
    assert sec.check_pinned(presented, der_file) == presented
    with pytest.raises(sec.CertificateRefused, match="does not match the pinned") as err:
        sec.check_pinned(_der(other.cert), sim.server.cert)
    assert sec.fingerprint(_der(other.cert)) in str(err.value)


def test_first_cert_of_a_chain(pairs):
    sim, other = pairs
    a, b = _der(sim.server.cert), _der(other.cert)
    assert sec.first_cert(a + b) == a
    assert sec.first_cert(a) == a
    assert sec.check_pinned(a + b, sim.server.cert) == a


def test_trust_dir_accepts_listed_certificates_only(pairs, tmp_path):
    sim, other = pairs
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "notes.txt").write_text("ignored")
    (trust / "other.der").write_bytes(_der(other.cert))
    with pytest.raises(sec.CertificateRefused, match="not trusted"):
        sec.check_trusted(_der(sim.server.cert), trust)
    (trust / "plc.pem").write_bytes(sim.server.cert.read_bytes())
    assert sec.check_trusted(_der(sim.server.cert), trust) == _der(sim.server.cert)
    with pytest.raises(sec.CertificateRefused, match="not a directory"):
        sec.check_trusted(_der(sim.server.cert), tmp_path / "missing")


def _ca_and_leaf(not_after_days: int = 30):
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plant CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plc")]))
        .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(2)
        .not_valid_before(now - dt.timedelta(days=60))
        .not_valid_after(now + dt.timedelta(days=not_after_days))
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    return ca, leaf


def test_trust_dir_accepts_a_certificate_issued_by_a_trusted_ca(tmp_path):
    ca, leaf = _ca_and_leaf()
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_der = sec.der(leaf)
    assert sec.check_trusted(leaf_der, trust) == leaf_der
    other_ca, forged = _ca_and_leaf()  # same CA name, different key: signature fails
    assert other_ca.subject == ca.subject
    with pytest.raises(sec.CertificateRefused, match="not trusted"):
        sec.check_trusted(sec.der(forged), trust)


def test_trust_dir_refuses_an_expired_certificate_even_if_listed(tmp_path):
    _ca, leaf = _ca_and_leaf(not_after_days=-1)
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "leaf.der").write_bytes(sec.der(leaf))
    with pytest.raises(sec.CertificateRefused, match="validity period"):
        sec.check_trusted(sec.der(leaf), trust)


def test_client_identity_reads_the_uri_from_the_certificate(pairs):
    sim, _ = pairs
    ident = sec.load_client_identity(sim.client.cert, sim.client.key)
    assert ident.application_uri == certs.CLIENT_URI
    assert ident.key_is_pem and ident.cert_der == _der(sim.client.cert)


def test_certs_cli_writes_a_pair(tmp_path, capsys):
    assert certs.main([str(tmp_path), "--role", "client", "--uri", "urn:site:gw1"]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 fingerprint" in out and "urn:site:gw1" in out
    assert sec.application_uri(sec.load_cert(tmp_path / "client_cert.pem")) == "urn:site:gw1"
