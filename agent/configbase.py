"""Moved to `drivers/configbase.py` (drivers own their config and may not import agent/);
kept while modules still import it from here."""

from drivers.configbase import *  # noqa: F403
