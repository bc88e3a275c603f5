"""Secrets in the config: names of environment variables are checked and never echoed when
they are not names, a password never travels in clear text unless the file says so, and the
secrets and certificate files start-up reads are read by `check` too (exit 78, not 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import EX_CONFIG, main
from agent.config import ConfigError, load_config, parse_config
from drivers.opcua_config import OpcUaDevice

MODBUS = """\
devices:
  - name: plc
    driver: modbus
    host: 10.0.0.5
    poll_groups:
      - name: g
        interval_ms: 1000
        tags:
          - {name: t, table: holding, address: 0, type: float32}
"""

OPCUA = """\
devices:
  - name: skid
    driver: opcua
    endpoint: opc.tcp://10.0.0.6:4840
    username: operator
    password_env: UA_PASSWORD
{extra}    poll_groups:
      - name: g
        interval_ms: 10000
        tags:
          - {{name: flow, node: "ns=2;s=Pump.Flow"}}
"""


def _refused(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "plant.yaml")
    return str(info.value).splitlines()


SECRETS = ["hunter2!", "s3cr3t pa55", "Bearer abc.def", "9startswithdigit", "pw=x", "a-b"]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(
    ("template", "path"),
    [
        (OPCUA.format(extra="").replace("UA_PASSWORD", "{s}"), "devices[0].password_env"),
        (
            MODBUS + "publish:\n  mqtt: {{username: gw, password_env: {s}}}\n",
            "publish.mqtt.password_env",
        ),
        (MODBUS + "http: {{bearer_token_env: {s}}}\n", "http.bearer_token_env"),
    ],
    ids=["opcua", "mqtt", "http"],
)
def test_a_secret_pasted_into_an_env_field_is_refused_and_never_echoed(
    template: str, path: str, secret: str
) -> None:
    text = template.replace("{s}", f'"{secret}"').replace("{{", "{").replace("}}", "}")
    lines = _refused(text)
    assert len(lines) == 1, lines
    assert lines[0].endswith(
        f": {path}: is not a valid environment variable name (value not shown)"
    ), lines
    assert secret not in lines[0]
    for part in secret.split():
        assert part not in lines[0]


def test_a_password_on_a_none_channel_is_refused() -> None:
    assert _refused(OPCUA.format(extra="")) == [
        "plant.yaml:6: devices[0].password_env: security_policy None sends the password in "
        "clear text: use a security policy, or set allow_plaintext_password: true"
    ]
    text = OPCUA.format(extra="").replace("password_env: UA_PASSWORD", "password_file: /run/ua")
    assert _refused(text) == [
        "plant.yaml:6: devices[0].password_file: security_policy None sends the password in "
        "clear text: use a security policy, or set allow_plaintext_password: true"
    ]


def test_allow_plaintext_password_is_the_explicit_opt_in() -> None:
    dev = OpcUaDevice.model_validate(
        {
            "name": "skid",
            "driver": "opcua",
            "endpoint": "opc.tcp://10.0.0.6:4840",
            "username": "operator",
            "password_env": "UA_PASSWORD",
            "allow_plaintext_password": True,
            "poll_groups": [
                {"name": "g", "interval_ms": 10000, "tags": [{"name": "f", "node": "i=1"}]}
            ],
        }
    )
    assert dev.allow_plaintext_password and not dev.secure
    # a user name alone (no password) is not a secret on the wire
    text = OPCUA.format(extra="").replace("    password_env: UA_PASSWORD\n", "")
    assert parse_config(text).devices[0].username == "operator"


# --- secrets and certificate files: what start-up reads, `check` reads -------------------

UNSET = "EDGELOOP_TEST_SURELY_UNSET"

SECURE = """\
devices:
  - name: skid
    driver: opcua
    endpoint: opc.tcp://10.0.0.6:4840
    security_policy: Basic256Sha256
    security_mode: SignAndEncrypt
    client_certificate: {client_cert}
    client_private_key: {client_key}
    {trust}
    username: operator
    password_file: {password_file}
    poll_groups:
      - name: g
        interval_ms: 10000
        tags:
          - {{name: flow, node: "ns=2;s=Pump.Flow"}}
"""


def _secure(certs, tmp_path: Path, **over: str) -> str:
    pw = tmp_path / "ua_password"
    pw.write_text("s3cret\n")
    values = {
        "client_cert": str(certs.client_cert),
        "client_key": str(certs.client_key),
        "trust": f"server_certificate: {certs.server_cert}",
        "password_file": str(pw),
    }
    values.update(over)
    return SECURE.format(**values)


def test_secure_opcua_with_readable_files_passes(opcua_certs, tmp_path: Path) -> None:
    cfg = parse_config(_secure(opcua_certs, tmp_path), "plant.yaml")
    assert cfg.devices[0].read_password() == "s3cret"
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "server.pem").write_bytes(opcua_certs.server_cert.read_bytes())
    parse_config(_secure(opcua_certs, tmp_path, trust=f"trust_dir: {trust}"), "plant.yaml")


def test_files_that_are_not_certificates_or_keys_are_refused(opcua_certs, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    lines = _refused(_secure(opcua_certs, tmp_path, client_cert=str(junk), client_key=str(junk)))
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"plant.yaml:7: devices[0].client_certificate: {junk} is not a ")
    assert lines[1].startswith(f"plant.yaml:8: devices[0].client_private_key: {junk} is not a ")
    trust = tmp_path / "trusted"
    trust.mkdir()
    (trust / "bad.der").write_bytes(b"\x30\x03abc")
    (line,) = _refused(_secure(opcua_certs, tmp_path, trust=f"trust_dir: {trust}"))
    assert line.startswith("plant.yaml:9: devices[0].trust_dir: cannot load "), line


def test_an_encrypted_key_is_refused(opcua_certs, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(opcua_certs.client_key.read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    (line,) = _refused(_secure(opcua_certs, tmp_path, client_key=str(locked)))
    assert line == (
        f"plant.yaml:8: devices[0].client_private_key: {locked} is encrypted: the driver "
        "needs an unencrypted key"
    )


def test_the_path_and_content_of_a_password_file_are_never_shown(
    opcua_certs, tmp_path: Path
) -> None:
    pasted = "hunter2-pasted-here"
    (line,) = _refused(_secure(opcua_certs, tmp_path, password_file=pasted))
    assert line == (
        "plant.yaml:11: devices[0].password_file: cannot read the file: No such file or directory"
    )
    latin = tmp_path / "latin1"
    latin.write_bytes("pässwörd".encode("latin-1"))
    (line,) = _refused(_secure(opcua_certs, tmp_path, password_file=str(latin)))
    assert line == "plant.yaml:11: devices[0].password_file: the file is not UTF-8 text"


def test_relative_paths_are_relative_to_the_config_file(
    opcua_certs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    (conf / "pki").mkdir(parents=True)
    for name, src in [
        ("client.pem", opcua_certs.client_cert),
        ("client.key", opcua_certs.client_key),
        ("server.pem", opcua_certs.server_cert),
    ]:
        (conf / "pki" / name).write_bytes(src.read_bytes())
    (conf / "pki" / "ua_password").write_text("pw\n")
    (conf / "plant.yaml").write_text(
        SECURE.format(
            client_cert="pki/client.pem",
            client_key="pki/client.key",
            trust="server_certificate: pki/server.pem",
            password_file="pki/ua_password",
        )
        + "http: {bearer_token_file: pki/ua_password}\n"
    )
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_config(conf / "plant.yaml")
    dev = cfg.devices[0]
    assert dev.client_certificate == str(conf.resolve() / "pki/client.pem")
    assert dev.password_file == str(conf.resolve() / "pki/ua_password")
    assert cfg.http.resolve_token() == "pw"
    assert cfg.source is not None and cfg.config_dir == conf.resolve()


def test_a_disabled_device_or_publisher_is_not_checked(tmp_path: Path) -> None:
    text = OPCUA.format(extra="    allow_plaintext_password: true\n    enabled: false\n")
    parse_config(text.replace("UA_PASSWORD", UNSET))
    text = MODBUS + f"publish:\n  enabled: false\n  mqtt: {{username: u, password_env: {UNSET}}}\n"
    parse_config(text)


def test_env_secrets_are_checked_where_they_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    text = OPCUA.format(extra="    allow_plaintext_password: true\n").replace("UA_PASSWORD", UNSET)
    assert _refused(text) == [
        f"plant.yaml:6: devices[0].password_env: environment variable {UNSET} is not set"
    ]
    monkeypatch.setenv(UNSET, "")  # set but empty: the driver sends an empty password
    assert parse_config(text).devices[0].read_password() == ""
    text = MODBUS + f"http: {{bearer_token_env: {UNSET}}}\n"
    assert _refused(text) == [
        f"plant.yaml:10: http.bearer_token_env: environment variable {UNSET} is unset or empty"
    ]
    monkeypatch.setenv(UNSET, "tok")
    assert parse_config(text).http.resolve_token() == "tok"


def test_mqtt_tls_files_are_loaded_as_the_publisher_loads_them(opcua_certs, tmp_path: Path) -> None:
    tls = (
        f"{{ca_file: {opcua_certs.server_cert}, cert_file: {opcua_certs.client_cert}, "
        f"key_file: {opcua_certs.client_key}}}"
    )
    cfg = parse_config(MODBUS + f"publish:\n  mqtt:\n    tls: {tls}\n")
    assert cfg.publish.mqtt.tls is not None
    assert cfg.publish.mqtt.tls.ssl_context() is not None
    wrong_key = tls.replace(str(opcua_certs.client_key), str(opcua_certs.server_key))
    (line,) = _refused(MODBUS + f"publish:\n  mqtt:\n    tls: {wrong_key}\n")
    assert line.startswith(
        "plant.yaml:12: publish.mqtt.tls.cert_file: cannot load the client certificate and key"
    ), line


def test_check_and_run_refuse_a_missing_token_file_with_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(MODBUS + "http: {bearer_token_file: /nonexistent/edgeloop/http.token}\n")
    assert main(["check", str(path)]) == EX_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        f"{path}:10: http.bearer_token_file: cannot read the file: No such file or directory"
    )
    from agent.service import ConfigRefused, load_and_compile

    with pytest.raises(ConfigRefused) as info:
        load_and_compile(path)
    assert info.value.lines == err[:1]
