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
