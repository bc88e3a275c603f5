"""`make pi-check`: the aarch64 offline bundle installed and run on emulated arm64 Debian.

Proves that every wheel of dist/edgeloop-<v>-aarch64.tar.gz and the kernel (numba JIT and
the ahead-of-time module) work on aarch64, without a Raspberry Pi: an arm64 Debian bookworm
root (Python 3.11, as on Raspberry Pi OS 12) is built once with mmdebstrap from
deb.debian.org and cached as build/pi-root.tar; every run unpacks a fresh copy to
build/pi-root/, installs the bundle into it with the bundle's own install.sh in a network
namespace without network (`unshare --net`: pip --no-index, nothing fetched; install.sh
also builds the kernel's AOT module there, its line is the step's note), then runs
under qemu-user (binfmt_misc and qemu-user-static: the kernel starts aarch64 ELF binaries
through qemu-aarch64-static, so a plain chroot works):

    edgeloop --version
    every compiled extension module of the venv imported
    the kernel on numba's JIT (cold, then warm numba cache), its AOT module built, loaded
    edgeloop check <config>          config/edgeloop.yaml re-pointed at this run's hw_sim
    edgeloop control-eval            the shipped TFLite policy vs PID vs MPC (LiteRT, XNNPACK)
    edgeloop run <config>            60 s against hw_sim (and mosquitto) running on the host

then the same steps natively on the host's .venv as the reference (--no-native skips
them), and prints a table: wall and CPU seconds and peak RSS of each step (CPU and RSS of
the emulated ones are the qemu process's: translation included), and for the runs the
tag-values stored, polls, control writes, CPU per value and RSS.  Emulated times are not
Raspberry Pi times (qemu-user translates every instruction); the figures say that it
works and what emulation costs, not how fast a Pi is.

Needs root (mmdebstrap, chroot, mounts) and Debian's mmdebstrap, qemu-user-static and
binfmt-support (apt-get installed when missing).  Results: build/pi-check/ (logs,
report.md).

    sudo .venv/bin/python tools/pi_check.py [--seconds 60] [--rebuild-root] [--source tree]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUILD = ROOT / "build"
ROOT_TAR = BUILD / "pi-root.tar"  # the pristine arm64 root, built once
WORK = BUILD / "pi-root"  # a fresh copy per run, the bundle installed into it
OUT = BUILD / "pi-check"  # logs and report.md
SUITE = "bookworm"  # Python 3.11, glibc 2.36: Raspberry Pi OS 12's
MIRROR = "http://deb.debian.org/debian"
# install.sh needs python3 with venv/ensurepip and useradd (passwd); minbase has the rest.
# g++ (numba.pycc's toolchain probe wants the C++ compiler too), libc6-dev and python3-dev
# let the kernel's ahead-of-time module build (agent/kernel/aot.py) as on a gateway that
# has them; without them the service's kernel runs on numba's JIT.
ROOT_PACKAGES = (
    "python3",
    "python3-venv",
    "ca-certificates",
    "passwd",
    "g++",
    "libc6-dev",
    "python3-dev",
)
HOST_TOOLS = {  # command -> Debian package
    "mmdebstrap": "mmdebstrap",
    "qemu-aarch64-static": "qemu-user-static",
    "update-binfmts": "binfmt-support",
    "unshare": "util-linux",
}
BINFMT = Path("/proc/sys/fs/binfmt_misc")
TOKEN_ENV = "EDGELOOP_HTTP_TOKEN"
TOKEN = "pi-check-" + os.urandom(8).hex()
CFG_IN_ROOT = "/etc/edgeloop/pi-check.yaml"
STATE_IN_ROOT = "/var/lib/edgeloop/pi-check"
NUMBA_CACHE_IN_ROOT = "/var/cache/edgeloop/numba"


class CheckError(Exception):
    pass


def say(msg: str) -> None:
    print(f"pi-check {time.strftime('%H:%M:%S')}: {msg}", flush=True)


def ensure_host_tools() -> None:
    """Debian's mmdebstrap, qemu-user-static and binfmt-support, installed when missing."""
    missing = sorted({pkg for cmd, pkg in HOST_TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    say(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def ensure_binfmt() -> str:
    """aarch64 ELF binaries run through qemu-aarch64-static (binfmt_misc, flag F: the
    interpreter is opened when registered, so it works inside a chroot too)."""
    if not (BINFMT / "register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            check=False,
            capture_output=True,
        )
    if not (BINFMT / "register").exists():
        raise CheckError(
            f"{BINFMT} cannot be mounted here (a container without binfmt_misc): "
            "pi-check needs qemu-user through binfmt_misc"
        )
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise CheckError(f"{entry}: qemu-aarch64 is not registered (update-binfmts failed)")
    flags = next((ln for ln in entry.read_text().splitlines() if ln.startswith("flags:")), "")
    return flags.removeprefix("flags:").strip()


def build_root(rebuild: bool) -> float | None:
    """The arm64 Debian root as build/pi-root.tar (mmdebstrap; its maintainer scripts run
    under qemu).  Returns the seconds it took, None when the cached one was used."""
    stamp = ROOT_TAR.with_suffix(".packages")
    wanted = f"{SUITE} {','.join(ROOT_PACKAGES)}\n"
    if ROOT_TAR.exists() and stamp.exists() and stamp.read_text() == wanted and not rebuild:
        return None
    BUILD.mkdir(exist_ok=True)
    partial = ROOT_TAR.with_suffix(".partial.tar")
    say(f"building the arm64 Debian {SUITE} root (once; minutes: dpkg runs under qemu)")
    t0 = time.monotonic()
    subprocess.run(
        [
            "mmdebstrap",
            "--arch=arm64",
            "--variant=minbase",
            f"--include={','.join(ROOT_PACKAGES)}",
            "--quiet",
            SUITE,
            str(partial),
            MIRROR,
        ],
        check=True,
    )
    os.replace(partial, ROOT_TAR)
    stamp.write_text(wanted)
    return time.monotonic() - t0


def make_bundle(source: str) -> Path:
    """dist/edgeloop-<v>-aarch64.tar.gz through tools/bundle.py (what `make bundle` runs)."""
    from tools import bundle

    made = bundle.build(["aarch64"], None, ROOT / "dist", bundle.default_cache(), say, source)
    return made[0]


def fresh_root() -> None:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    with tarfile.open(ROOT_TAR) as tf:
        tf.extractall(WORK, filter="fully_trusted")  # our own root: devices, setuid, links


def pi_cpuinfo() -> Path:
    """A Raspberry Pi 4's /proc/cpuinfo (Cortex-A72), one entry per host core.  qemu-user
    7.2 shows an aarch64 guest the host's x86 /proc/cpuinfo; with /sys visible, LiteRT's
    cpuinfo library (XNNPACK) parses it as ARM and crashes in `Interpreter()` (SIGSEGV),
    and without /sys it gives up and LiteRT runs without XNNPACK.  With this file both
    XNNPACK and LLVM (numba's host CPU: cortex-a72) see what they see on a Pi."""
    entry = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
        "CPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    )
    text = "".join(entry.format(i=i) for i in range(os.cpu_count() or 1))
    text += "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
    path = OUT / "cpuinfo"
    path.write_text(text)
    return path


def in_root(argv: list[str], *, net: bool = True, env: dict[str, str] | None = None) -> list[str]:
    """`argv` run in the arm64 root: a private mount namespace (so /proc, /sys, /dev and
    the Pi's /proc/cpuinfo vanish with it), `--net` off means a network namespace with
    nothing but a down loopback."""
    wrap = ["unshare", "--mount"] + ([] if net else ["--net"])
    script = (
        'root=$1 cpuinfo=$2; shift 2; mount -t proc proc "$root/proc" && '
        'mount --bind "$cpuinfo" "$root/proc/cpuinfo" && mount --rbind /sys "$root/sys" && '
        'mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"'
    )
    clean = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    envs = [f"{k}={v}" for k, v in clean.items()]
    cpuinfo = str(pi_cpuinfo())
    shell = ["sh", "-c", script, "pi-check", str(WORK), cpuinfo]
    return [*wrap, *shell, "/usr/bin/env", "-i", *envs, *argv]


@dataclass
class Target:
    """Where the steps run: the emulated arm64 root, or the host's .venv as the native
    x86_64 reference (the working tree's code; the bundle is HEAD's)."""

    name: str
    edgeloop: str
    python: str
    cfg: str  # the config as the process sees it
    state: Path  # its history directory, as the host sees it
    numba_cache: str
    emulated: bool

    def argv(
        self, argv: list[str], *, net: bool = True, env: dict[str, str] | None = None
    ) -> list[str]:
        if self.emulated:
            return in_root(argv, net=net, env=env)
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        return ["env", "-i", *(f"{k}={v}" for k, v in {**keep, **(env or {})}.items()), *argv]


AARCH64 = Target(
    "aarch64 (qemu-user)",
    "/usr/local/bin/edgeloop",
    "/opt/edgeloop/current/bin/python",
    CFG_IN_ROOT,
    WORK / STATE_IN_ROOT.lstrip("/"),
    NUMBA_CACHE_IN_ROOT,
    True,
)
NATIVE = Target(
    "x86_64 (native)",
    str(ROOT / ".venv" / "bin" / "edgeloop"),
    str(ROOT / ".venv" / "bin" / "python"),
    str(OUT / "native" / "pi-check.yaml"),
    OUT / "native",
    str(OUT / "native-numba"),
    False,
)


@dataclass
class Step:
    name: str
    rc: int
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    note: str = ""
    output: str = field(default="", repr=False)


def run_step(
    target: Target, name: str, argv: list[str], *, timeout_s: float = 3600, **kw: Any
) -> Step:
    """One command on `target`, with its wall time, CPU (user + system, children included)
    and peak RSS from wait4(); its output goes to build/pi-check/<target>-<name>.log."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{target.name.split()[0]} {name}".lower()).strip("-")
    log = OUT / f"{slug}.log"
    say(f"{target.name}: {name} ...")
    t0 = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.Popen(target.argv(argv, **kw), stdout=f, stderr=subprocess.STDOUT)
    deadline = t0 + timeout_s
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    out = log.read_text(errors="replace")
    step = Step(
        name, proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, "", out
    )
    say(f"{target.name}: {name}: exit {step.rc} in {wall:.1f} s (CPU {step.cpu_s:.1f} s)")
    if step.rc != 0:
        tail = "\n".join(out.splitlines()[-30:])
        raise CheckError(f"{name} failed (exit {step.rc}); {log}:\n{tail}")
    return step


def install_bundle(bundle: Path) -> Step:
    """The bundle's own install.sh, as on the box (docs/operations.md), without network."""
    dest = WORK / "root" / bundle.name
    shutil.copy2(bundle, dest)
    with tarfile.open(dest) as tf:
        tf.extractall(WORK / "root", filter="data")
    top = bundle.name.removesuffix(".tar.gz")
    argv = ["bash", f"/root/{top}/systemd/install.sh"]
    step = run_step(AARCH64, "install.sh (no network)", argv, net=False)
    # it builds the kernel's AOT module for this CPU too: its one line says how that went
    aot = [ln for ln in step.output.splitlines() if "kernel AOT module" in ln]
    step.note = aot[-1].removeprefix("install.sh: ")[:90] if aot else ""
    return step


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak) of the process, MB."""
    st = Path(f"/proc/{pid}/status").read_text()
    kb = {k: int(re.search(rf"^{k}:\s+(\d+)", st, re.M).group(1)) for k in ("VmRSS", "VmHWM")}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    req.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric_sums(text: str) -> dict[str, float]:
    """Each series name summed over its labels (histograms: _sum and _count only)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "_bucket{" in line:
            continue
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def stored_values(db: Path, t0_ns: int, t1_ns: int) -> tuple[int, int]:
    """(frames, tag-values) the agent committed with poll time in [t0, t1]."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute(
            "SELECT COUNT(*), COALESCE(SUM(json_array_length(g.tags)), 0) FROM frames f "
            "JOIN groups g ON g.id = f.group_id WHERE f.ts_ns BETWEEN ? AND ?",
            (t0_ns, t1_ns),
        ).fetchone()
    finally:
        con.close()
    return int(row[0]), int(row[1])


def run_against_sim(
    target: Target, seconds: float, cfg: dict[str, Any], ports: Any
) -> dict[str, Any]:
    """`edgeloop run` on `target` for `seconds` after it is ready, against hw_sim (and
    mosquitto when installed) on the host; CPU and RSS of the agent's process from /proc
    (emulated: the qemu process, translation included)."""
    from lab import demo

    slug = re.sub(r"[^a-z0-9]+", "-", target.name.split()[0])
    sim_log = OUT / f"{slug}-hw_sim.log"
    sim_log.unlink(missing_ok=True)
    sim = demo.start_sim(
        ports,
        sim_log,
        "--scenario",
        str(ROOT / "hw_sim" / "scenarios" / "demo.yaml"),
        "--seed",
        "7",
    )
    mosq = demo._start_mosquitto(ports.mqtt, OUT) if cfg["publish"]["enabled"] else None
    agent = None
    res: dict[str, Any] = {"target": target.name, "mqtt": mosq is not None}
    env = {TOKEN_ENV: TOKEN, "NUMBA_CACHE_DIR": target.numba_cache}
    run_log = OUT / f"{slug}-run.log"
    try:
        say(f"{target.name}: edgeloop run for {seconds:.0f} s against hw_sim on the host ...")
        t_start = time.monotonic()
        with open(run_log, "w") as log:
            argv = target.argv([target.edgeloop, "run", target.cfg], env=env)
            agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        while True:  # the pid stays the agent's: unshare, sh and chroot all exec
            if agent.poll() is not None:
                raise CheckError(f"edgeloop run exited ({agent.returncode}); {run_log}")
            with contextlib.suppress(OSError):
                if get(ports.http, "/readyz", 2.0)[0] == 200:
                    break
            if time.monotonic() - t_start > 900:
                raise CheckError("edgeloop run not ready after 900 s")
            time.sleep(0.5)
        res["ready_s"] = time.monotonic() - t_start
        cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"edgeloop run" not in cmdline:
            raise CheckError(f"pid {agent.pid} is not the agent: {cmdline!r}")
        say(f"ready in {res['ready_s']:.1f} s; measuring {seconds:.0f} s")
        m0 = metric_sums(get(ports.http, "/metrics")[1])
        cpu0, t0, t0_ns = proc_cpu_s(agent.pid), time.monotonic(), time.time_ns()
        rss_max = 0.0
        while time.monotonic() - t0 < seconds:
            if agent.poll() is not None:
                raise CheckError(f"edgeloop run exited ({agent.returncode}); {run_log}")
            rss_max = max(rss_max, proc_rss_mb(agent.pid)[0])
            time.sleep(1.0)
        cpu1, t1, t1_ns = proc_cpu_s(agent.pid), time.monotonic(), time.time_ns()
        m1 = metric_sums(get(ports.http, "/metrics")[1])
        res["hwm_mb"] = proc_rss_mb(agent.pid)[1]
        res["ready"] = get(ports.http, "/readyz")[1].strip()
        res["window_s"] = t1 - t0
        res["cpu_s"] = cpu1 - cpu0
        res["rss_mb"] = rss_max
        d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
        res["polls"] = int(d.get("edgeloop_polls_total", 0))
        res["poll_errors"] = int(d.get("edgeloop_poll_errors_total", 0))
        res["overruns"] = int(d.get("edgeloop_poll_overruns_total", 0))
        res["control_writes"] = int(d.get("edgeloop_control_writes_total", 0))
        res["fallbacks"] = int(d.get("edgeloop_control_fallbacks_total", 0))
        res["published"] = int(d.get("edgeloop_publish_messages_total", 0))
        for key, name in (
            ("kernel", "edgeloop_kernel_seconds"),
            ("step", "edgeloop_control_step_seconds"),
        ):
            n = d.get(f"{name}_count", 0.0)
            res[f"{key}_us"] = d.get(f"{name}_sum", 0.0) / n * 1e6 if n else float("nan")
        res["mode"] = {
            ln.split("loop=")[1].split('"')[1]: ln.rsplit(" ", 1)[1]
            for ln in get(ports.http, "/metrics")[1].splitlines()
            if ln.startswith("edgeloop_control_mode{") and "loop=" in ln
        }
        t_stop = time.monotonic()
        rc = demo.stop_process(agent, 60.0)
        res["stop_s"], res["rc"] = time.monotonic() - t_stop, rc
    finally:
        demo.stop_process(agent, 10.0)
        demo.stop_process(sim, 10.0)
        demo.stop_process(mosq, 5.0)
    m = re.search(r"kernel: (\w+) backend", run_log.read_text(errors="replace"))
    res["backend"] = m.group(1) if m else "?"
    db = target.state / "history.db"
    res["frames"], res["values"] = stored_values(db, t0_ns, t1_ns)
    if res["rc"] != 0:
        raise CheckError(f"edgeloop run stopped with status {res['rc']}; {run_log}")
    if res["values"] == 0:
        raise CheckError("edgeloop run stored no values in the window")
    return res


def write_config(target: Target) -> tuple[dict[str, Any], Any]:
    """config/edgeloop.yaml re-pointed at this run's hw_sim ports (lab.demo's rewrite), its
    history in the target's state directory (in the root: /var/lib/edgeloop/pi-check)."""
    import yaml

    from lab import demo

    ports = demo.Ports()
    mqtt = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
    state = Path(STATE_IN_ROOT) if target.emulated else target.state
    cfg = demo.demo_config(ROOT / "config" / "edgeloop.yaml", ports, state, mqtt=mqtt)
    cfg["http"]["bearer_token_env"] = TOKEN_ENV
    if target.state.exists():
        shutil.rmtree(target.state)
    target.state.mkdir(parents=True)
    cfg_file = WORK / CFG_IN_ROOT.lstrip("/") if target.emulated else Path(target.cfg)
    cfg_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg, ports


# the kernel's live path loaded (or compiled) and run once, as the service's start does
WARM = (
    "import sys; from agent.config import load_config; from agent.tags import "
    "compile_config; from agent.kernel import KernelRuntime, jit; c = compile_config("
    "load_config(sys.argv[1], check_files=False)); "
    "KernelRuntime(c.config.kernel, c.table).warmup(); "
    "print('kernel backend:', jit.live().backend, 'numba imported:', 'numba' in sys.modules)"
)
# every compiled extension module the venv's distributions ship, imported
IMPORT_ALL = """
import importlib, importlib.metadata as md, sys
OPTIONAL = {"numba.np.ufunc.tbbpool": "needs Intel TBB (numba's optional threading layer)"}
ok, bad, dists = 0, [], set()
for d in md.distributions():
    for f in d.files or ():
        if not (f.name.endswith(".so") and (".cpython-" in f.name or ".abi3." in f.name)):
            continue
        mod = ".".join([*f.parts[:-1], f.name.split(".")[0]])
        if mod in OPTIONAL or ".tests." in mod:
            continue
        try:
            importlib.import_module(mod)
        except Exception as e:
            bad.append(f"{mod}: {type(e).__name__}: {e}")
        else:
            ok += 1
            dists.add(d.metadata["Name"])
for b in bad:
    print("FAILED", b)
print(f"{ok} compiled extension modules of {len(dists)} distributions import")
sys.exit(1 if bad else 0)
"""
MODES = {"0": "off", "1": "manual", "2": "fallback", "3": "model"}  # edgeloop_control_mode


def steps_on(target: Target, control_eval: bool) -> list[Step]:
    """--version, the kernel's JIT on a cold then warm numba cache (what the service's first
    and later starts compile or load), check and control-eval, each timed."""
    # cold: install.sh's AOT build (the JIT compiles the kernel first) filled the root's cache
    cache = WORK / target.numba_cache.lstrip("/") if target.emulated else Path(target.numba_cache)
    shutil.rmtree(cache, ignore_errors=True)

    def last(step: Step, width: int = 70) -> str:
        return (step.output.strip().splitlines() or [""])[-1][:width]

    steps = [run_step(target, "edgeloop --version", [target.edgeloop, "--version"])]
    steps[-1].note = last(steps[-1])
    if target.emulated:
        steps.append(run_step(target, "import every extension", [target.python, "-c", IMPORT_ALL]))
        steps[-1].note = last(steps[-1])
    warm = [target.python, "-c", WARM, target.cfg]
    for kernel, name in (
        ("jit", "kernel JIT, cold numba cache"),
        ("jit", "kernel JIT, warm numba cache"),
        ("aot", "kernel AOT module build"),
        ("aot", "kernel AOT module loaded"),
    ):
        env = {"NUMBA_CACHE_DIR": target.numba_cache, "EDGELOOP_KERNEL": kernel}
        if name.endswith("build"):
            steps.append(run_step(target, name, [target.python, "-m", "agent.kernel.aot"], env=env))
        else:
            steps.append(run_step(target, name, warm, env=env))
        steps[-1].note = last(steps[-1])
    check = [target.edgeloop, "check", target.cfg]
    steps.append(run_step(target, "edgeloop check", check, env={TOKEN_ENV: TOKEN}))
    steps[-1].note = (steps[-1].output.strip().splitlines() or [""])[-1][:70]
    if control_eval:
        steps.append(run_step(target, "edgeloop control-eval", [target.edgeloop, "control-eval"]))
        lines = steps[-1].output.splitlines()
        iae = [ln.split(",")[0] for ln in lines if ln.startswith("TFLite IAE")]
        steps[-1].note = iae[0] if iae else ""
    return steps


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    qemu = subprocess.run(
        ["qemu-aarch64-static", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    load = os.getloadavg()[0]
    return f"{cpu}, {os.cpu_count()} cores, load {load:.1f}, Linux {platform.release()}; {qemu}"


def report(
    install: Step | None,
    steps: list[Step],
    native: list[Step],
    runs: list[dict[str, Any]],
    notes: list[str],
) -> str:
    lines = [
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {machine()}",
        "",
        "| step | aarch64 wall s | CPU s | peak RSS MB | x86_64 native CPU s | RSS MB "
        "| CPU ratio | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    ref = {s.name: s for s in native}
    for s in ([install] if install else []) + steps:
        n = ref.get(s.name)
        cells = (
            ("-", "-", "-")
            if n is None
            else (
                f"{n.cpu_s:.1f}",
                f"{n.maxrss_mb:.0f}",
                f"{s.cpu_s / n.cpu_s:.0f}x" if n.cpu_s > 0.05 else "-",
            )
        )
        lines.append(
            f"| {s.name} | {s.wall_s:.1f} | {s.cpu_s:.1f} | {s.maxrss_mb:.0f} | "
            + " | ".join(cells)
            + f" | {s.note} |"
        )
    if runs:
        r0 = runs[0]
        lines += [
            "",
            f"`edgeloop run`, {r0['window_s']:.0f} s window after /readyz (numba cache and "
            "AOT module from the steps above), "
            f"MQTT {'on (loopback mosquitto)' if r0['mqtt'] else 'off'}, hw_sim demo scenario:",
            "",
            "| run | ready s | tag-values | values/s | CPU % of a core | CPU µs/value "
            "| RSS MB | VmHWM MB | polls | poll errors | overruns | kernel µs/frame "
            "| kernel | control step µs | writes | loop mode | published | stop s |",
            "|---|" + "---:|" * 11 + "---|---:|---:|---|---:|---:|",
        ]
        for r in runs:
            per_value = r["cpu_s"] / r["values"] * 1e6 if r["values"] else float("nan")
            mode = ", ".join(MODES.get(v, v) for v in r["mode"].values())
            lines.append(
                f"| {r['target']} | {r['ready_s']:.1f} | {r['values']} "
                f"| {r['values'] / r['window_s']:.0f} "
                f"| {100 * r['cpu_s'] / r['window_s']:.1f} | {per_value:.0f} "
                f"| {r['rss_mb']:.0f} | {r['hwm_mb']:.0f} | {r['polls']} "
                f"| {r['poll_errors']} | {r['overruns']} | {r['kernel_us']:.0f} | {r['backend']} "
                f"| {r['step_us']:.0f} | {r['control_writes']} | {mode} "
                f"| {r['published']} | {r['stop_s']:.1f} |"
            )
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="edgeloop run window")
    ap.add_argument("--rebuild-root", action="store_true", help="rebuild build/pi-root.tar")
    ap.add_argument("--bundle", type=Path, help="use this aarch64 bundle (default: build one)")
    ap.add_argument(
        "--source",
        choices=("head", "tree"),
        default="head",
        help="bundle the commit HEAD (default) or the working tree",
    )
    ap.add_argument("--no-control-eval", action="store_true", help="skip it (a minute or more)")
    ap.add_argument(
        "--no-native",
        action="store_true",
        help="skip the same steps natively on the host's .venv (the reference column)",
    )
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("pi-check: needs root (mmdebstrap, chroot, mounts): sudo make pi-check")
        return 2
    shutil.rmtree(OUT, ignore_errors=True)  # this run's logs only
    OUT.mkdir(parents=True)
    install: Step | None = None
    steps: list[Step] = []
    native: list[Step] = []
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        ensure_host_tools()
        flags = ensure_binfmt()
        notes.append(
            f"qemu-aarch64-static through binfmt_misc (flags {flags}) in a plain chroot, "
            "a Raspberry Pi 4 /proc/cpuinfo bound over the emulated one"
        )
        took = build_root(a.rebuild_root)
        notes.append(
            f"root: mmdebstrap arm64 {SUITE} minbase + {', '.join(ROOT_PACKAGES)}"
            + (f", built in {took:.0f} s" if took else " (cached build/pi-root.tar)")
        )
        bundle = a.bundle or make_bundle(a.source)
        notes.append(f"bundle {bundle.name}, {bundle.stat().st_size / 1e6:.0f} MB")
        fresh_root()
        install = install_bundle(bundle)
        cfg, ports = write_config(AARCH64)
        steps = steps_on(AARCH64, not a.no_control_eval)
        runs.append(run_against_sim(AARCH64, a.seconds, cfg, ports))
        if not a.no_native:
            cfg, ports = write_config(NATIVE)
            native = steps_on(NATIVE, not a.no_control_eval)
            runs.append(run_against_sim(NATIVE, a.seconds, cfg, ports))
            notes.append("x86_64 native: the host's .venv (the working tree), same steps")
    except (CheckError, subprocess.CalledProcessError) as e:
        print(report(install, steps, native, runs, notes))
        print(f"pi-check: FAILED: {e}", file=sys.stderr)
        return 1
    text = report(install, steps, native, runs, notes)
    (OUT / "report.md").write_text(text + "\n")
    print(text)
    say(f"passed; report in {OUT / 'report.md'}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
