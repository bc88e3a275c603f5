"""Signal kernel: per-tag cleaning/filtering/scoring and multivariate groups, numba-jitted.

`KernelRuntime(kernel_cfg, table)` is the service's entry point; `pertag.step`/`pertag.run`
and `multivar.group_step`/`multivar.group_run` are the jitted cores it and `edgeloop replay`
share.  Importing this package does not import numba: the live path runs the ahead-of-time
module built from the same functions (`aot`), numba's JIT only without it (`jit`).
"""

from agent.kernel.runtime import KernelError, KernelRuntime, RunResult
from agent.kernel.settings import GroupSettings, KernelConfig, TagParams

__all__ = [
    "GroupSettings",
    "KernelConfig",
    "KernelError",
    "KernelRuntime",
    "RunResult",
    "TagParams",
]
