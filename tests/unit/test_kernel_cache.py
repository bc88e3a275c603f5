"""numba cache=True honours NUMBA_CACHE_DIR: a second process loads instead of compiling (JIT)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = (
    "import time, numpy as np; t0 = time.perf_counter();"
    "from agent.kernel import pertag as pt; from agent.kernel.settings import TagParams;"
    "s = pt.TagState.new(pt.compile_params([TagParams()] * 2)); pt.run(s, np.zeros((3, 2)));"
    "print(time.perf_counter() - t0)"
)


def _run(cache: Path) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), EDGELOOP_KERNEL="jit")  # the JIT path
    out = subprocess.run(
        [sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def test_kernel_is_cached_in_numba_cache_dir(tmp_path) -> None:
    cold = _run(tmp_path)
    index = list(tmp_path.rglob("*.nbi"))
    assert any("pertag" in p.name and "run_tags" in p.name for p in index), index
    warm = _run(tmp_path)
    assert warm < cold  # loaded from the cache, not compiled again
