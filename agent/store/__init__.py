"""Local history in SQLite (WAL): frames, events and control actions, with retention and export.

`HistoryStore` is the running component (a writer thread behind a bounded queue); the read
helpers (`open_reader`, `HistoryReader`) serve `edgeloop export` and `edgeloop report`.
"""

from agent.store.history import HistoryReader, HistoryStore, StoreError, open_reader
from agent.store.settings import StoreConfig

__all__ = ["HistoryReader", "HistoryStore", "StoreConfig", "StoreError", "open_reader"]
