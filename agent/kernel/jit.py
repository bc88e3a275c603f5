"""Which compiled code runs the kernel: the ahead-of-time module, or numba's JIT on demand.

numba's import (~58 MB resident) and LLVM's set-up for the cached kernel (~39 MB) were most
of the agent's memory.  So the kernel's jitted functions are declared with `njit` from here,
which imports numba only when one of them is first called, and the service's live path and
replay call them through `live()`: the ahead-of-time module that `agent.kernel.aot` builds
from the same functions (a plain C extension; numba is never imported) when one matching
the kernel's source is present, numba's JIT otherwise.  `EDGELOOP_KERNEL=jit` forces the
JIT, `EDGELOOP_KERNEL=aot` refuses to run without the module (a test or a bench that must
measure it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

LIVE_FUNCTIONS = (
    ("agent.kernel.pertag", "step_tags"),
    ("agent.kernel.pertag", "run_tags"),
    ("agent.kernel.multivar", "group_step"),
    ("agent.kernel.multivar", "group_run"),
)


_STATE = ("f8:2", "f8:2", "i8:2", "f8:2", "f8:2", "i8:2", "f8:2", "i8:1")
_MODEL = ("i8:1", "f8:1", "f8:1", "f8:2", "f8:1", "f8:1", "f8:1", "f8:1", "i8:1", "f8:1", "f8:1",
          "f8:1", "f8:2", "i8:1")  # fmt: skip
ARG_SPECS: dict[str, tuple[str, ...]] = {
    # dtype:ndim of each argument, C-contiguous; "int" = a Python int.  The AOT build checks
    # its numba signatures against these, and `check` checks arguments against them once
    # (the compiled module itself only checks the item size of an array).
    "step_tags": (*_STATE, "f8:1", "u1:1", "i8:1", "f8:1", "u2:1", "f8:1", "int", "int"),
    "run_tags": (*_STATE, "f8:2", "u1:2", "i8:1", "f8:2", "u2:2", "f8:2", "int"),
    "group_step": ("f8:1", "u2:1", *_MODEL),
    "group_run": ("f8:2", "u2:2", "int", *_MODEL, "f8:1", "u1:1"),
}


_PARSED: dict[str, tuple[tuple[Any, int] | None, ...]] = {}


def _parsed(name: str) -> tuple[tuple[Any, int] | None, ...]:
    spec = _PARSED.get(name)
    if spec is None:
        import numpy as np

        spec = tuple(
            None if w == "int" else (np.dtype(w.split(":")[0]), int(w.split(":")[1]))
            for w in ARG_SPECS[name]
        )
        _PARSED[name] = spec
    return spec


def check(name: str, args: tuple[Any, ...]) -> None:
    """Raise TypeError unless `args` fit live function `name` (dtype, ndim, C-contiguous).

    The service checks its arrays once where they are made, not per frame (a few µs): a
    wrong array would be read with the wrong layout by the ahead-of-time module.
    """
    spec = _parsed(name)
    if len(args) != len(spec):
        raise TypeError(f"{name}: {len(args)} arguments, expected {len(spec)}")
    for k, (a, want) in enumerate(zip(args, spec, strict=True)):
        if want is None:
            if not isinstance(a, int):
                raise TypeError(f"{name}: argument {k} is {type(a).__name__}, expected int")
            continue
        fl = getattr(a, "flags", None)
        if (
            fl is None
            or getattr(a, "dtype", None) != want[0]
            or a.ndim != want[1]
            or not fl.c_contiguous
            or not fl.writeable
        ):
            got = f"{a.dtype}[{a.ndim}d]" if hasattr(a, "dtype") else type(a).__name__
            raise TypeError(
                f"{name}: argument {k} is {got}, expected C-contiguous "
                f"{ARG_SPECS[name][k]} (dtype:ndim)"
            )


class LazyJit:
    """A function to be `numba.njit`-ed with `options` on its first call.

    The first call of any lazy function of a module jits all of them and rebinds the module's
    globals to the dispatchers, so jitted callers find jitted callees (numba resolves a
    callee through the caller's globals when it compiles).  Attribute access (`signatures`,
    `py_func`, ...) goes to the dispatcher too.
    """

    def __init__(self, func: Callable[..., Any], options: dict[str, Any]) -> None:
        self.py_func = func
        self.options = options
        self.__name__ = func.__name__
        self.__doc__ = func.__doc__
        self.__module__ = func.__module__
        self.__wrapped__ = func

    def dispatcher(self) -> Any:
        materialize(self.__module__)
        return sys.modules[self.__module__].__dict__[self.__name__]

    def __call__(self, *args: Any) -> Any:
        return self.dispatcher()(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dispatcher(), name)


def njit(**options: Any) -> Callable[[Callable[..., Any]], LazyJit]:
    """`numba.njit(**options)`, applied on first use instead of at import."""

    def deco(func: Callable[..., Any]) -> LazyJit:
        return LazyJit(func, options)

    return deco


def materialize(module: str) -> None:
    """Jit every lazy function of `module` (imports numba), rebinding its globals."""
    ns = sys.modules[module].__dict__
    lazy = {k: v for k, v in ns.items() if isinstance(v, LazyJit) and v.__module__ == module}
    if not lazy:
        return
    import numba

    for name, fn in lazy.items():
        ns[name] = numba.njit(**fn.options)(fn.py_func)


def mode() -> str:
    """`EDGELOOP_KERNEL`: `auto` (default), `aot` or `jit`."""
    m = os.environ.get("EDGELOOP_KERNEL", "auto").strip().lower() or "auto"
    if m not in ("auto", "aot", "jit"):
        raise ValueError(f"EDGELOOP_KERNEL={m!r}: expected auto, aot or jit")
    return m


_LIVE: SimpleNamespace | None = None


def live() -> SimpleNamespace:
    """The functions the live path and replay call (`step_tags`, `run_tags`, `group_step`,
    `group_run`) and `backend` (`"aot"` or `"jit"`); chosen once per process."""
    global _LIVE
    if _LIVE is None:
        _LIVE = _choose(mode())
    return _LIVE


def chosen() -> bool:
    """Whether `live()` has chosen its backend in this process."""
    return _LIVE is not None


def reset() -> None:
    """Forget the choice (tests switch `EDGELOOP_KERNEL`)."""
    global _LIVE
    _LIVE = None


def _choose(m: str) -> SimpleNamespace:
    if m != "jit":
        from agent.kernel import aot

        fns = aot.load()
        if fns is not None:
            return SimpleNamespace(backend="aot", path=str(aot.out_dir()), **fns)
        if m == "aot":
            raise RuntimeError(
                f"EDGELOOP_KERNEL=aot but no kernel module in {aot.out_dir()} matches this "
                "source; build it: python -m agent.kernel.aot"
            )
    import importlib

    fns = {}
    for module, name in LIVE_FUNCTIONS:
        materialize(module)
        fns[name] = getattr(importlib.import_module(module), name)
    return SimpleNamespace(backend="jit", path=None, **fns)
