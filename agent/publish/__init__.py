"""Northbound MQTT: JSON or Sparkplug B, through a durable SQLite outbox (at-least-once)."""

from agent.publish.outbox import Outbox, OutboxError
from agent.publish.publisher import Publisher, PublishError, backoff_delay
from agent.publish.settings import PublishConfig

__all__ = ["Outbox", "OutboxError", "PublishConfig", "PublishError", "Publisher", "backoff_delay"]
