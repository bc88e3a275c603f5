"""The publish: and store: sections reject what would fail later."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.publish.settings import PublishConfig
from agent.store.settings import StoreConfig


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"mqtt": {"qos": 0}}, "qos"),
        ({"mqtt": {"username": "u", "password_env": "A", "password_file": "/f"}}, "not both"),
        ({"mqtt": {"password_env": "A"}}, "needs a username"),
        ({"mqtt": {"tls": {"cert_file": "/c"}}}, "go together"),
        ({"mqtt": {"backoff_initial_s": 5, "backoff_max_s": 1}}, "backoff_max_s"),
        ({"mqtt": {"hots": "x"}}, "hots"),
        ({"encoding": "protobuf"}, "encoding"),
        ({"outbox": {"max_mb": 0}}, "max_mb"),
    ],
)
def test_publish_config_errors(doc: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PublishConfig.model_validate(doc)


def test_publish_defaults_match_the_design() -> None:
    c = PublishConfig()
    assert (c.mqtt.host, c.mqtt.port, c.mqtt.topic_prefix, c.mqtt.qos) == (
        "127.0.0.1",
        1883,
        "edgeloop",
        1,
    )
    assert c.encoding == "json" and c.batch_window_ms == 0


def test_store_config() -> None:
    c = StoreConfig.model_validate({"path": "/tmp/h.db", "retention_days": 7, "max_mb": 2048})
    assert c.synchronous == "normal" and c.batch_ms == 500
    with pytest.raises(ValidationError, match="retention_days"):
        StoreConfig.model_validate({"retention_days": 0})
    with pytest.raises(ValidationError, match="retension"):
        StoreConfig.model_validate({"retension_days": 3})


def test_json_flat_rule_tag_over_group_over_default_field_by_field() -> None:
    c = PublishConfig.model_validate(
        {
            "encoding": "json_flat",
            "json_flat": {
                "deadband": 0.1,
                "max_silence_s": 60,
                "groups": {"fast": {"deadband": 0.5}},
                "tags": {"temp": {"max_silence_s": 5}, "level": {"deadband": 0}},
            },
        }
    )
    f = c.json_flat
    assert f.rule_for("temp", "fast") == (0.5, 5.0)  # group's deadband, tag's silence
    assert f.rule_for("level", "fast") == (0.0, 60.0)  # a tag's 0 wins over the group's 0.5
    assert f.rule_for("other", "slow") == (0.1, 60.0)
    with pytest.raises(ValidationError, match="deadband"):
        PublishConfig.model_validate({"json_flat": {"tags": {"x": {"deadband": -1}}}})
