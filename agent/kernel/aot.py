"""Ahead-of-time build of the kernel's jitted functions into a C extension (numba.pycc).

Why: the agent's live path needs four compiled functions, but numba's JIT costs ~100 MB of
resident memory to provide them (the import, then LLVM to load even a cached kernel).  The
same Python functions compiled once by `numba.pycc` into a plain extension module run with
only numpy loaded.  They are the same functions with the same compile options as the jitted
ones (`error_model="numpy"`, no reference-counting runtime, this CPU), so the results are
identical (tests/unit/test_kernel_aot.py checks it bit for bit) at the same speed
(bench/kernel.py).

The module's name carries a hash of the kernel's source, numba's version and the CPU, so a
module built from other source is never loaded.  It is written to `out_dir()`:
`EDGELOOP_KERNEL_AOT_DIR`, else `$NUMBA_CACHE_DIR/edgeloop-aot`, else this package's
`__pycache__`.  `systemd/install.sh` builds it there with `python -m agent.kernel.aot` (as
the service user, for the gateway's CPU: it cannot ship pre-built); the service builds it
in a child process when it is missing (`ensure`), so the agent itself never imports numba.
numba.pycc is marked for deprecation upstream; without it, or without a toolchain
(`toolchain_problem`), the kernel falls back to numba's JIT, with the same results.

A build that failed is remembered in `<module_name()>.failed` beside where the module would
be (JSON: reason, time, source tag), so a service in a restart loop does not pay the build
(25 s here, minutes on an emulated or small ARM CPU) at every start; `ensure` skips the build
while it is there, and an explicit `python -m agent.kernel.aot` retries and clears it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = ("pertag.py", "multivar.py", "flags.py", "jit.py", "aot.py")
BUILD_TIMEOUT_S = 600.0
FALLBACK = "falling back to numba's JIT (~100 MB more resident memory)"


def source_tag() -> str:
    """Hash of the kernel's source, numba/llvmlite/numpy versions, Python, CPU and platform."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((HERE / name).read_bytes())
    for dist in ("numba", "llvmlite", "numpy"):
        try:
            h.update(importlib.metadata.version(dist).encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(b"-")
    h.update(sys.version.encode())
    h.update(platform.machine().encode())
    h.update(_cpu_model().encode())
    return h.hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                return line
    except OSError:
        pass
    return ""


def module_name() -> str:
    return f"_kernel_aot_{source_tag()}"


def out_dir() -> Path:
    env = os.environ.get("EDGELOOP_KERNEL_AOT_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("NUMBA_CACHE_DIR")
    if cache:
        return Path(cache) / "edgeloop-aot"
    return HERE / "__pycache__"


def find(directory: Path | None = None) -> dict[str, Path] | None:
    """The built modules matching this source (one per live function), or None."""
    from agent.kernel.jit import LIVE_FUNCTIONS

    d = directory or out_dir()
    name = module_name()
    found = {}
    for _, fname in LIVE_FUNCTIONS:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            p = d / f"{name}_{fname}{suffix}"
            if p.is_file():
                found[fname] = p
                break
        else:
            return None
    return found


def load(directory: Path | None = None) -> dict[str, Any] | None:
    """The live functions from the built modules matching this source; None without them."""
    paths = find(directory)
    if paths is None:
        return None
    fns = {}
    for fname, path in paths.items():
        name = path.name.split(".", 1)[0]
        mod = sys.modules.get(name)
        if mod is None:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                return None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            sys.modules[name] = mod
        fns[fname] = getattr(mod, fname)
    return fns


def toolchain_problem() -> str | None:
    """What the build lacks on this machine, in words an operator can act on; None if nothing.

    numba.pycc compiles and links with the C compiler of Python's build (`CC`, else sysconfig's;
    `gcc -shared` links), against Python.h.  Before that, numba probes that this compiler builds
    a C *and* a C++ file (`external_compiler_works`): gcc compiles the C++ one with cc1plus from
    Debian's g++ package, newer setuptools with `CXX` (g++).  Without it numba's own message
    suggests conda packages, wrong on a gateway.  Checked without importing numba (it is cheap,
    so it runs at every start and the build follows as soon as the packages are installed).
    """
    missing = []
    cc = _compiler("CC", "cc")
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc})")
    cxx = _compiler("CXX", "g++")
    if shutil.which(cxx) is None:
        missing.append(cxx)
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        missing.append("Python's C headers (Python.h)")
    if not missing:
        return None
    return (
        "the AOT kernel needs a C compiler (cc/gcc), g++ and Python's C headers; missing: "
        f"{', '.join(missing)} (Debian: apt-get install build-essential python3-dev)"
    )


def _compiler(var: str, default: str) -> str:
    """The compiler numba.pycc's distutils will run: `$CC`/`$CXX`, else Python's build's."""
    return str(os.environ.get(var) or sysconfig.get_config_var(var) or default).split()[0]


def failure_path(directory: Path | None = None) -> Path:
    """Where a failed build of this source is remembered."""
    return (directory or out_dir()) / f"{module_name()}.failed"


def failure(directory: Path | None = None) -> dict[str, Any] | None:
    """The remembered failed build of this source here, or None (none, unreadable, other tag)."""
    try:
        rec = json.loads(failure_path(directory).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("tag") != source_tag():
        return None
    return rec


def record_failure(reason: str, kind: str, directory: Path | None = None) -> Path | None:
    """Remember a failed build (`kind`: "toolchain" or "build"); None if it cannot be written."""
    path = failure_path(directory)
    rec = {
        "reason": reason,
        "kind": kind,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tag": source_tag(),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("kernel: cannot remember the failed AOT build in %s (%s)", path, exc)
        return None
    return path


def _retry_hint(d: Path) -> str:
    cmd = f"{sys.executable} -m agent.kernel.aot --out {d}"
    if os.environ.get("NUMBA_CACHE_DIR"):  # the build JIT-compiles first, into numba's cache
        cmd = f"env NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']} {cmd}"
    return f"to retry: delete {failure_path(d)} or run `{cmd}` as the service's user"


def ensure(timeout_s: float = BUILD_TIMEOUT_S) -> dict[str, Path] | None:
    """Build the module in a child process (numba's memory leaves with it) when missing.

    Returns its paths, or None when it is not built here: no toolchain, a build that failed
    before (remembered, see the module's doc), an unwritable directory, no numba.pycc.  The
    kernel then runs on numba's JIT.  Each outcome is one log line.
    """
    d = out_dir()
    paths = find(d)
    if paths is not None:
        return paths
    rec = failure(d)
    if rec is not None and rec.get("kind") != "toolchain":
        log.warning(
            "kernel: the AOT module failed to build here at %s (%s); %s; %s",
            rec.get("time"), rec.get("reason"), FALLBACK, _retry_hint(d),
        )  # fmt: skip
        return None
    problem = toolchain_problem()
    if problem is not None:
        if rec is None or rec.get("reason") != problem:
            record_failure(problem, "toolchain", d)
        log.warning("kernel: %s; %s", problem, FALLBACK)
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not os.access(d, os.W_OK):
            raise PermissionError(f"{d} is not writable")
    except OSError as exc:
        log.warning("kernel: cannot build the AOT module (%s); %s", exc, FALLBACK)
        return None
    log.info("kernel: building the ahead-of-time module in %s (once per install)", d)
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "agent.kernel.aot", "--out", str(d)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        reason = f"{exc}"
    else:
        if out.returncode == 0:
            log.info("kernel AOT module built in %.1f s", time.monotonic() - t0)
            return find(d)
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or [f"exit {out.returncode}"]
        reason = tail[0].removeprefix("kernel AOT build failed: ")
    record_failure(reason, "build", d)
    log.warning(
        "kernel: the AOT module build failed (%s); %s; %s", reason, FALLBACK, _retry_hint(d)
    )
    return None


# --- build (imports numba) ----------------------------------------------------------------


def _samples() -> dict[str, tuple[Any, ...]]:
    """Arguments of each live function, made by the code that makes them at run time."""
    import numpy as np

    from agent.kernel import multivar as mv
    from agent.kernel import pertag as pt
    from agent.kernel.settings import GroupSettings, TagParams

    P = pt.compile_params([TagParams()] * 3, np.full(3, np.nan), np.full(3, np.nan))
    s = pt.TagState.new(P)
    st = (s.P, s.S, s.I, s.ring, s.srt, s.win, s.wbuf, s.due)
    row = (np.zeros(3), np.zeros(3, np.uint8), np.zeros(3, np.int64))
    out = (np.zeros(3), np.zeros(3, np.uint16), np.zeros(3))
    rows = (np.zeros((2, 3)), np.zeros((2, 3), np.uint8), np.zeros(2, np.int64))
    outs = (np.zeros((2, 3)), np.zeros((2, 3), np.uint16), np.zeros((2, 3)))
    g = GroupSettings(name="g", tags=["a", "b", "c"])
    X = np.random.default_rng(0).normal(size=(max(g.warmup_samples, 40), 3))
    m = mv.fit_group(g, np.arange(3, dtype=np.int64), X, 1.0)
    ma = mv.model_args(m)
    return {
        "step_tags": (*st, *row, *out, 0, 3),
        "run_tags": (*st, *rows, *outs, 0),
        "group_step": (np.zeros(3), np.zeros(3, np.uint16), *ma),
        "group_run": (
            np.zeros((2, 3)), np.zeros((2, 3), np.uint16), 0, *ma, np.zeros(2),
            np.zeros(2, np.uint8),
        ),
    }  # fmt: skip


def signatures() -> dict[str, Any]:
    """numba signatures of the live functions, as the JIT types their run-time arguments."""
    import numba

    from agent.kernel import jit

    sigs = {}
    samples = _samples()
    for module, name in jit.LIVE_FUNCTIONS:
        jit.materialize(module)
        disp = getattr(sys.modules[module], name)
        jit.check(name, samples[name])  # the signature is what `check` lets through
        args = tuple(numba.typeof(a) for a in samples[name])
        for a in args:
            if isinstance(a, numba.types.Array) and a.layout != "C":
                raise RuntimeError(f"{name}: argument {a} is not C-contiguous")
        sigs[name] = _signature(disp, args)
    return sigs


def _signature(disp: Any, args: tuple[Any, ...]) -> Any:
    disp.compile(args)
    return disp.overloads[args].signature


def build(out: Path) -> dict[str, Path]:
    """Compile each live function into `out/<module_name()>_<function><ext suffix>`."""
    import warnings

    from numba.core.compiler import Flags

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import numba.pycc.compiler as pycc_compiler
        from numba.pycc import CC
        from numba.pycc.platform import external_compiler_works

    from agent.kernel import jit

    if not external_compiler_works():  # numba's probe, before the JIT compiles; our words
        raise RuntimeError(
            f"the C compiler ({_compiler('CC', 'cc')}) cannot build numba's C and C++ test "
            "files (does gcc have its C++ front end, cc1plus?): apt-get install "
            "build-essential python3-dev"
        )
    sigs = signatures()
    name = module_name()
    out.mkdir(parents=True, exist_ok=True)
    saved = pycc_compiler.Flags
    paths = {}
    try:
        for module, fname in jit.LIVE_FUNCTIONS:
            disp = getattr(sys.modules[module], fname)

            class KernelFlags(Flags):  # exactly the jitted function's flags (error model, NRT)
                def __init__(self, *a: Any, _d: Any = disp, **k: Any) -> None:
                    super().__init__(*a, **k)
                    _d.targetdescr.options.parse_as_flags(self, _d.targetoptions)

            pycc_compiler.Flags = KernelFlags
            # One module per function: pycc inlining the shared helper into two exports of one
            # module fails numba's type inference (the helper's IR is reused across exports).
            with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
                cc = CC(f"{name}_{fname}")
                cc.output_dir = tmp
                cc.use_nrt = False
                cc.target_cpu = "host"
                cc.verbose = False
                cc.export(fname, sigs[fname])(disp.py_func)
                cc.compile()
                built = next(Path(tmp).glob(f"{name}_{fname}*"))
                paths[fname] = out / built.name
                os.replace(built, paths[fname])
    finally:
        pycc_compiler.Flags = saved
    return paths


def main(argv: list[str] | None = None) -> int:
    """Build into `--out` even after a remembered failure (which a success clears)."""
    import argparse
    import traceback

    ap = argparse.ArgumentParser(description="Build the kernel's ahead-of-time module.")
    ap.add_argument("--out", type=Path, default=None, help="directory (default: out_dir())")
    ap.add_argument("--force", action="store_true", help="rebuild even when present")
    args = ap.parse_args(argv)
    out = args.out or out_dir()
    if not args.force and find(out) is not None:
        failure_path(out).unlink(missing_ok=True)
        print(f"present in {out}")
        return 0
    reason = toolchain_problem()
    if reason is not None:
        record_failure(reason, "toolchain", out)
    else:
        t0 = time.monotonic()
        try:
            paths = build(out)
        except Exception as exc:  # any cause: remembered so that the service does not retry
            traceback.print_exc()
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            record_failure(reason, "build", out)
        else:
            failure_path(out).unlink(missing_ok=True)
            print(f"{len(paths)} modules in {out} ({time.monotonic() - t0:.1f} s)")
            return 0
    print(f"kernel AOT build failed: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
