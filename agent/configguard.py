"""Validate a config in a child process with a memory and time budget (SIGHUP reloads).

A reload parses a file inside the running gateway, next to the control loops.  The loader's
own limits (`agent.configyaml`: size, nesting, aliases, node count) already stop every known
YAML bomb in milliseconds; this is the second wall, for whatever they miss: the bytes that
were read once are first validated by a child process of the same interpreter
(`python -m agent.configguard FILE`) under `RLIMIT_AS` (the memory it has after its imports
plus `memory_mb`), `RLIMIT_CPU` and a wall-clock timeout, at a lower CPU priority.  Only
when the child accepts them does the service parse the same bytes in-process.  A child that
runs out of memory or time costs the service nothing but the wait, and the reload is refused
with one line, like any other config problem.

`agent.service.load_and_compile(path, isolated=True)` is the entry point for reloads.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

__all__ = [
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_S",
    "validate_isolated",
    "validate_isolated_async",
]

DEFAULT_MEMORY_MB = 512
DEFAULT_TIMEOUT_S = 30.0
NICE = 10  # below the service, so a hostile file cannot starve control of the CPU


def _command(filename: str, memory_mb: int, timeout_s: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.configguard",
        filename,
        str(int(memory_mb)),
        str(max(1, int(timeout_s) + 5)),  # CPU seconds: a backstop should the parent die
    ]


def validate_isolated(
    data: bytes,
    filename: str,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """Problem lines (`file:line: path: message`) for the config `data`, found by a child
    process under the budget; [] when the child accepts it.  Never raises for bad input."""
    try:
        proc = subprocess.run(  # our own interpreter and module
            _command(filename, memory_mb, timeout_s),
            input=data,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return [f"{filename}:1: validating the file took longer than {timeout_s:g} s: refused"]
    except OSError as exc:
        return [f"{filename}:1: cannot start the validating process: {exc.strerror}"]
    return _verdict(filename, memory_mb, timeout_s, proc.returncode, proc.stdout, proc.stderr)


async def validate_isolated_async(
    data: bytes,
    filename: str,
    *,
    memory_mb: int = DEFAULT_MEMORY_MB,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """`validate_isolated` for the event loop: a cancel (SIGTERM during a reload) kills the
    child at once instead of leaving a thread waiting for it."""
    import asyncio

    try:
        proc = await asyncio.create_subprocess_exec(
            *_command(filename, memory_mb, timeout_s),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return [f"{filename}:1: cannot start the validating process: {exc.strerror}"]
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate(data)
    except TimeoutError:
        return [f"{filename}:1: validating the file took longer than {timeout_s:g} s: refused"]
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
    return _verdict(filename, memory_mb, timeout_s, proc.returncode or 0, out, err)


def _verdict(
    filename: str, memory_mb: int, timeout_s: float, code: int, stdout: bytes, stderr: bytes
) -> list[str]:
    result = None
    lines_out = stdout.decode("utf-8", "replace").strip().splitlines()
    if lines_out:
        try:
            result = json.loads(lines_out[-1])
        except ValueError:
            result = None
    if isinstance(result, dict) and code == 0:
        if result.get("memory"):
            return [_over_budget(filename, memory_mb, timeout_s)]
        return [str(line) for line in result.get("lines", [])]
    if code in (-signal.SIGKILL, -signal.SIGXCPU, -signal.SIGSEGV) or _out_of_memory(stderr):
        return [_over_budget(filename, memory_mb, timeout_s)]
    err = stderr.decode("utf-8", "replace").strip().splitlines()
    why = f": {err[-1][:200]}" if err else ""
    return [f"{filename}:1: the validating process failed (exit {code}){why}"]


def _out_of_memory(stderr: bytes) -> bool:
    """At its address-space limit CPython fails as MemoryError or, where a C allocation fails
    without setting one, as SystemError ("error return without exception set")."""
    return b"MemoryError" in stderr or b"SystemError" in stderr


def _over_budget(filename: str, memory_mb: int, timeout_s: float) -> str:
    return (
        f"{filename}:1: validating the file needs more than {memory_mb} MiB of memory "
        f"(or {timeout_s:g} s): refused"
    )


def _vm_size_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _child(argv: list[str]) -> int:
    filename, memory_mb, cpu_s = argv[0], int(argv[1]), int(argv[2])
    import resource

    from agent.config import MAX_CONFIG_BYTES, ConfigError, parse_config

    with contextlib.suppress(OSError):
        os.nice(NICE)
    data = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)  # the parser refuses more
    # The budget is on top of what the imports (numpy, the TFLite runtime, pydantic) took.
    limit = _vm_size_bytes() + memory_mb * 1024 * 1024
    if limit > memory_mb * 1024 * 1024:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    try:
        parse_config(data, filename)
        out: dict[str, object] = {"lines": []}
    except ConfigError as exc:
        out = {"lines": str(exc).splitlines()}
    except (MemoryError, SystemError):  # SystemError: a C allocation failed at the limit
        out = {"memory": True}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
