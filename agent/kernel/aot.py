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
`__pycache__`.  Build with `python -m agent.kernel.aot` (needs numba and a C compiler); the
service builds it in a child process when it is missing (`ensure`), so the agent itself
never imports numba.  numba.pycc is marked for deprecation upstream; without it (or a C
compiler) the kernel falls back to numba's JIT, with the same results.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCES = ("pertag.py", "multivar.py", "flags.py", "jit.py", "aot.py")
BUILD_TIMEOUT_S = 600.0


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


def ensure(timeout_s: float = BUILD_TIMEOUT_S) -> dict[str, Path] | None:
    """Build the module in a child process (numba's memory leaves with it) when missing.

    Returns its path, or None when it cannot be built here (no numba.pycc, no C compiler,
    unwritable directory): the kernel then runs on numba's JIT.
    """
    paths = find()
    if paths is not None:
        return paths
    log.info("kernel: building the ahead-of-time module in %s (once per install)", out_dir())
    t0 = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "agent.kernel.aot", "--out", str(out_dir())],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("kernel AOT build failed (%s); the kernel runs on numba's JIT", exc)
        return None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        log.warning("kernel AOT build failed (%s); the kernel runs on numba's JIT", tail[0])
        return None
    log.info("kernel AOT module built in %.1f s", time.monotonic() - t0)
    return find()


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

    from agent.kernel import jit

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
    import argparse

    ap = argparse.ArgumentParser(description="Build the kernel's ahead-of-time module.")
    ap.add_argument("--out", type=Path, default=None, help="directory (default: out_dir())")
    ap.add_argument("--force", action="store_true", help="rebuild even when present")
    args = ap.parse_args(argv)
    out = args.out or out_dir()
    if not args.force and find(out) is not None:
        print(f"present in {out}")
        return 0
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        print("no C compiler found (cc/gcc): cannot build", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    paths = build(out)
    print(f"{len(paths)} modules in {out} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
