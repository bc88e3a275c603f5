"""The ahead-of-time kernel module: built from the jitted functions, bit-identical to the JIT,
and what lets the agent run the kernel without importing numba (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.kernel import KernelConfig, KernelRuntime, aot, jit
from agent.kernel import pertag as pt
from agent.kernel.settings import TagParams
from agent.tags import TagTable

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


@pytest.fixture(scope="module")
def aot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built the way the service builds it: `aot.ensure()` in a child process, over the record
    of a missing toolchain (since installed), which the successful build clears."""
    d = tmp_path_factory.mktemp("aot")
    env = dict(os.environ, EDGELOOP_KERNEL_AOT_DIR=str(d), NUMBA_CACHE_DIR=str(d / "numba"))
    failed = aot.record_failure("the AOT kernel needs ... g++", "toolchain", d)
    assert failed is not None and aot.failure(d) is not None
    out = subprocess.run(
        [sys.executable, "-c", "from agent.kernel import aot; print(sorted(aot.ensure()))"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['group_run',", "'group_step',", "'run_tags',", "'step_tags']"]
    assert not failed.exists()
    return d


def _backend(monkeypatch: pytest.MonkeyPatch, mode: str, d: Path) -> None:
    monkeypatch.setenv("EDGELOOP_KERNEL", mode)
    monkeypatch.setenv("EDGELOOP_KERNEL_AOT_DIR", str(d))
    jit.reset()


@pytest.fixture(autouse=True)
def _forget_backend():
    yield
    jit.reset()


def noisy(rows: int, n: int, seed: int = 1) -> np.ndarray:
    """Random walks with NaNs, spikes, a stuck stretch and out-of-range values."""
    rng = np.random.default_rng(seed)
    raw = np.cumsum(rng.normal(size=(rows, n)), axis=0)
    raw[rng.random(raw.shape) < 0.01] = np.nan
    raw[rng.random(raw.shape) < 0.005] += 50.0
    raw[rows // 2 : rows // 2 + 40, 0] = 3.0
    raw[rows // 3, 1] = 1e6
    return raw


def pump(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    speed = 50.0 + np.cumsum(rng.normal(0, 0.3, n)) * 0.1
    cols = [0.2 * speed, 2.0 * speed, 0.05 * speed, 40 + 0 * speed]
    data = np.column_stack([c + rng.normal(0, 0.05, n) for c in cols])
    data[n // 2 :, 0] += 1.0  # a correlation break
    return data


def test_replay_is_identical_to_the_jit(monkeypatch, aot_dir) -> None:
    raw = noisy(2000, 60)
    params = [TagParams()] * 30 + [TagParams(false_alarms_per_day=1.0)] * 30
    out = {}
    for mode in ("jit", "aot"):
        _backend(monkeypatch, mode, aot_dir)
        st = pt.TagState.new(pt.compile_params(params, np.full(60, -1e5), np.full(60, 1e5)))
        out[mode] = (*pt.run(st, raw, period_s=0.1), st.S.copy(), st.P.copy())
        assert jit.live().backend == mode
    assert (out["jit"][1] != 0).sum() > 1000  # the data exercised the flags
    for a, b in zip(out["jit"], out["aot"], strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_live_frames_and_groups_are_identical_to_the_jit(monkeypatch, aot_dir) -> None:
    data = pump(900)
    cfg = KernelConfig.model_validate(
        {"groups": [{"name": "skid", "tags": ["c", "f", "p"], "warmup_samples": 300}]}
    )
    runs = {}
    for mode in ("jit", "aot"):
        _backend(monkeypatch, mode, aot_dir)
        tb = TagTable.for_names(["c", "f", "p", "t"])
        rt = KernelRuntime(cfg, tb)
        rt.warmup()
        rows, events = [], []
        for r, row in enumerate(data):
            tb.raw[:] = row
            tb.ts_ns[:] = r * 100_000_000
            events += rt.process(Slice("a", 0, 2)) + rt.process(Slice("b", 2, 4))
            rows.append(np.concatenate([tb.value, tb.score, tb.flags]))
        runs[mode] = (np.array(rows), events, rt.group_status())
        assert jit.live().backend == mode
        replay = rt.run(data)
        runs[mode + "_replay"] = (replay.value, replay.flags, replay.score)
    assert np.array_equal(runs["jit"][0], runs["aot"][0], equal_nan=True)
    assert runs["jit"][1] == runs["aot"][1] and any(e["level"] == "group" for e in runs["aot"][1])
    assert runs["jit"][2] == runs["aot"][2]
    for a, b in zip(runs["jit_replay"], runs["aot_replay"], strict=True):
        assert np.array_equal(a, b, equal_nan=True)


def test_the_agent_runs_the_kernel_without_importing_numba(aot_dir) -> None:
    code = (
        "import sys, numpy as np\n"
        "import agent.service\n"
        "from agent.kernel import KernelConfig, KernelRuntime, jit\n"
        "from agent.tags import TagTable\n"
        "tb = TagTable.for_names(['a', 'b'])\n"
        "rt = KernelRuntime(KernelConfig.model_validate({}), tb)\n"
        "rt.warmup()\n"
        "tb.raw[:] = [1.0, 2.0]\n"
        "rt.process(type('S', (), {'name': 'g', 'start': 0, 'stop': 2})())\n"
        "print(jit.live().backend, tb.value.tolist(), sorted(\n"
        "    m for m in ('numba', 'llvmlite') if m in sys.modules))\n"
    )
    env = dict(os.environ, EDGELOOP_KERNEL_AOT_DIR=str(aot_dir))
    env.pop("EDGELOOP_KERNEL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "aot [1.0, 2.0] []"


def test_a_module_from_other_source_is_not_loaded(monkeypatch, aot_dir, tmp_path) -> None:
    for p in aot_dir.glob("_kernel_aot_*"):
        (tmp_path / p.name.replace("_kernel_aot_", "_kernel_aot_0")).write_bytes(b"")
    _backend(monkeypatch, "aot", tmp_path)
    with pytest.raises(RuntimeError, match=r"python -m agent\.kernel\.aot"):
        jit.live()
    _backend(monkeypatch, "auto", tmp_path)
    assert jit.live().backend == "jit"


def test_arrays_the_compiled_module_would_misread_are_refused() -> None:
    st = pt.TagState.new(pt.compile_params([TagParams()] * 4))
    good = (np.zeros(4), np.zeros(4, np.uint8), np.zeros(4, np.int64))
    outs = (np.zeros(4), np.zeros(4, np.uint16), np.zeros(4))
    pt.step(st, *good, *outs)
    with pytest.raises(TypeError, match="argument 8 is float32"):
        pt.step(st, np.zeros(4, np.float32), *good[1:], *outs)
    with pytest.raises(TypeError, match="argument 11 is float64"):
        pt.step(st, *good, np.zeros(8)[::2], *outs[1:])
    with pytest.raises(TypeError, match="argument 12 is int16"):
        pt.step(st, *good, outs[0], np.zeros(4, np.int16), outs[2])
