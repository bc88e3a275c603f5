"""When the kernel's ahead-of-time module cannot be built here: what is missing is named in
our words, and a failed build is remembered so that a service in a restart loop does not
pay for it again at every start (issue 18).

No build succeeds here (that one is tests/unit/test_kernel_aot.py's fixture, 25 s): the
toolchain is broken for real, by a PATH without g++ or a C compiler that refuses an option.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from agent.kernel import aot

ROOT = Path(__file__).resolve().parents[2]
CXX = re.compile(r"(^|[-/])(g|c)\+\+(-[0-9.]+)?$")  # g++, c++, x86_64-linux-gnu-g++-12


def _path_without_gxx(tmp_path: Path) -> str:
    """A PATH with every program of this one except the C++ compilers (symlinks)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            link = bin_dir / name
            if not CXX.search(name) and not link.exists() and not link.is_symlink():
                link.symlink_to(Path(d) / name)
    return str(bin_dir)


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    d = tmp_path / "aot"
    monkeypatch.setenv("EDGELOOP_KERNEL_AOT_DIR", str(d))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    return d


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == aot.log.name]
    caplog.clear()
    return out


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to take away")
def test_missing_gxx_is_named_once_in_our_words_and_no_build_starts(
    here: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=aot.log.name)
    monkeypatch.setenv("PATH", _path_without_gxx(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert aot.ensure() is None
    (msg,) = _messages(caplog)
    assert "the AOT kernel needs a C compiler (cc/gcc), g++" in msg
    assert re.search(r"missing: [\w-]*g\+\+ \(Debian: apt-get install build-essential", msg)
    assert "falling back to numba's JIT (~100 MB more resident memory)" in msg
    assert "conda" not in msg and "building" not in msg
    rec = json.loads(aot.failure_path(here).read_text())
    assert rec["kind"] == "toolchain" and rec["tag"] == aot.source_tag()
    assert "g++" in rec["reason"] and rec["time"].endswith("Z")
    mtime = aot.failure_path(here).stat().st_mtime_ns

    assert aot.ensure() is None  # the next start: the same one line, no build, no rewrite
    assert _messages(caplog) == [msg]
    assert aot.failure_path(here).stat().st_mtime_ns == mtime
    assert aot.find(here) is None

    # g++ installed (here: the PATH back), the next start builds; a broken C compiler makes
    # that build fail fast, and the toolchain record becomes a build failure
    monkeypatch.undo()
    monkeypatch.setenv("EDGELOOP_KERNEL_AOT_DIR", str(here))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    monkeypatch.setenv("CC", f"{sysconfig.get_config_var('CC')} --no-such-option")
    assert aot.ensure() is None
    assert any(m.startswith("kernel: building the ahead-of-time module") for m in _messages(caplog))
    assert aot.failure(here)["kind"] == "build"  # type: ignore[index]


def test_a_failed_build_is_remembered_not_retried_and_an_explicit_build_retries(
    here: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=aot.log.name)
    # a real compiler that fails: numba's probe cannot build its test files with it
    monkeypatch.setenv("CC", f"{sysconfig.get_config_var('CC')} --no-such-option")
    assert aot.ensure() is None
    building, failed = _messages(caplog)
    assert building.startswith("kernel: building the ahead-of-time module")
    assert failed.startswith("kernel: the AOT module build failed (the C compiler (")
    assert "apt-get install build-essential python3-dev" in failed and "conda" not in failed
    rec = aot.failure(here)
    assert rec is not None and rec["kind"] == "build" and rec["tag"] == aot.source_tag()
    path = aot.failure_path(here)
    assert path.name == f"{aot.module_name()}.failed"
    mtime = path.stat().st_mtime_ns

    assert aot.ensure() is None  # the next start does not build again, and says how to retry
    (skipped,) = _messages(caplog)
    assert skipped.startswith(f"kernel: the AOT module failed to build here at {rec['time']}")
    assert f"to retry: delete {path} or run `" in skipped
    assert f" -m agent.kernel.aot --out {here}`" in skipped
    assert path.stat().st_mtime_ns == mtime

    # the explicit build does not skip: it tries again (and fails again, recorded anew)
    res = subprocess.run(
        [sys.executable, "-m", "agent.kernel.aot", "--out", str(here)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("kernel AOT build failed: the C compiler")
    assert path.stat().st_mtime_ns != mtime


def test_a_record_of_other_source_or_unreadable_is_ignored(here: Path) -> None:
    path = aot.record_failure("it broke", "build", here)
    assert path is not None and aot.failure(here) is not None
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "tag": "0" * 16}))
    assert aot.failure(here) is None
    path.write_text("{not json")
    assert aot.failure(here) is None
