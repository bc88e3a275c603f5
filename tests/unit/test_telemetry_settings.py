"""The `http:` section model: defaults, validation, and where the bearer token comes from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.telemetry.settings import HttpConfig


def test_defaults_are_loopback_port_9105_no_token() -> None:
    cfg = HttpConfig()
    assert (cfg.enabled, cfg.bind, cfg.port) == (True, "127.0.0.1", 9105)
    assert cfg.is_loopback
    assert cfg.resolve_token() is None


@pytest.mark.parametrize("bind", ["localhost", "0.0.0.0.0", "", "eth0"])
def test_bind_must_be_an_ip_literal(bind: str) -> None:
    with pytest.raises(ValidationError, match="bind must be an IP address"):
        HttpConfig(bind=bind)


@pytest.mark.parametrize(("bind", "loopback"), [("::1", True), ("0.0.0.0", False)])
def test_loopback_detection(bind: str, loopback: bool) -> None:
    assert HttpConfig(bind=bind).is_loopback is loopback


def test_unknown_keys_and_bad_ports_are_rejected() -> None:
    with pytest.raises(ValidationError):
        HttpConfig(prot=9105)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        HttpConfig(port=70000)


def test_token_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGELOOP_HTTP_TOKEN", "  abc123\n")
    assert HttpConfig(bearer_token_env="EDGELOOP_HTTP_TOKEN").resolve_token() == "abc123"
    monkeypatch.setenv("EDGELOOP_HTTP_TOKEN", "")
    with pytest.raises(ValueError, match="EDGELOOP_HTTP_TOKEN is unset or empty"):
        HttpConfig(bearer_token_env="EDGELOOP_HTTP_TOKEN").resolve_token()


def test_token_from_file_with_credentials_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "http-token").write_text("from-a-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = HttpConfig(bearer_token_file="$CREDENTIALS_DIRECTORY/http-token")
    assert cfg.resolve_token() == "from-a-file"
    with pytest.raises(ValueError, match="cannot read"):
        HttpConfig(bearer_token_file=tmp_path / "missing").resolve_token()
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        HttpConfig(bearer_token_file=tmp_path / "empty").resolve_token()


def test_token_env_and_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        HttpConfig(bearer_token_env="X", bearer_token_file=tmp_path / "t").resolve_token()
