"""What several sub-commands share: load + compile a config the way `edgeloop check` does."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def compile_or_report(path: str | Path | None, *, count: bool = False) -> Any | None:
    """The compiled config, or None after printing one line per problem to stderr (the
    caller exits 78).  `count` adds the `path: N problems` summary line `check` prints."""
    from agent.config import ConfigError, default_config_path
    from agent.tags import load_compiled

    path = path or default_config_path()
    try:
        return load_compiled(path)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        if count:
            n = len(e.issues)
            print(f"{path}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        return None
