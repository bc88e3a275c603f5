"""Shared pytest setup: fixture modules per area live in tests/fixtures/ and are listed here."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.sim",
    "tests.fixtures.opcua",
    "tests.fixtures.mqtt",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long soak/outage tests run only with EDGELOOP_LONG=1 (`make test-long`)."""
    if os.environ.get("EDGELOOP_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long test: run with EDGELOOP_LONG=1 (make test-long)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
