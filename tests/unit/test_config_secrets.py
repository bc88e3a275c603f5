"""Secrets in the config: names of environment variables are checked and never echoed when
they are not names, and a password never travels in clear text unless the file says so."""

from __future__ import annotations

import pytest

from agent.config import ConfigError, OpcUaDevice, parse_config

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
