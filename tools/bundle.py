"""Build the offline install bundle: dist/edgeloop-<version>-<arch>.tar.gz (`make bundle`).

One tarball per architecture (Linux aarch64 and x86_64), holding everything
`systemd/install.sh --bundle FILE` needs on a gateway without network:

    edgeloop-<version>-<arch>/
      BUNDLE                         version, arch, python tag, build date, wheel list
      wheels/*.whl                   edgeloop's own wheel + every runtime dependency
                                     (CPython 3.11, manylinux for <arch>, or pure Python)
      systemd/install.sh, systemd/edgeloop.service
      config/edgeloop.template.yaml, config/edgeloop.schema.json
      docs/operations.md

The dependency wheels are downloaded (`pip download --only-binary=:all: --platform ...`)
into a per-arch cache directory that later builds reuse (pip skips files already there),
then the exact set is resolved again **offline** from that cache plus the edgeloop wheel
(`pip install --dry-run --no-index --report`): a bundle is only written when its wheels
alone satisfy every requirement on the target platform.  Dependencies that publish only an
sdist and are pure Python are built to py3-none-any wheels with `pip wheel` first
(PURE_SDIST_ONLY; none today: every runtime dependency has wheels for both architectures,
checked 2026-12-05).

The bundle is built from the commit HEAD (`git archive`: committed code only, recorded in
BUNDLE as `commit=`); `--source tree` builds the working tree as it is instead.

    python tools/bundle.py                          # both archs, version from pyproject.toml
    python tools/bundle.py --arch x86_64 --version 0.1.1 --out /tmp/dist
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHES = ("x86_64", "aarch64")
PYTHON_VERSION = "3.11"
# manylinux tags a Raspberry Pi OS / Debian 12 (glibc 2.36) box accepts, oldest first
PLATFORMS = ("manylinux2014", "manylinux_2_17", "manylinux_2_27", "manylinux_2_28")
# Pure-Python dependencies with no wheel on PyPI: built with `pip wheel` (none today).
PURE_SDIST_ONLY: tuple[str, ...] = ()
# What the edgeloop wheel must carry (pyproject's package-data), checked after building it.
WHEEL_MUST_HOLD = (
    "agent/models/heater_policy.tflite",
    "agent/models/heater_policy.json",
    "hw_sim/scenarios/demo.yaml",
    "lab/data/heater_policy.commission.yaml",
)
# Files of the source tree shipped beside the wheels (install.sh reads them from there).
SHIPPED = (
    "systemd/install.sh",
    "systemd/edgeloop.service",
    "config/edgeloop.template.yaml",
    "config/edgeloop.schema.json",
    "docs/operations.md",
)
SOURCE = ("agent", "drivers", "hw_sim", "lab", "pyproject.toml", "README.md")


class BundleError(Exception):
    pass


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgeloop" / "bundle-wheels"


def _pip(args: list[str], *, isolated: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if isolated:  # only what the command line names: no pip.conf, no PIP_* (find-links...)
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    cmd = [sys.executable, "-m", "pip", "--no-input", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-25:])
        raise BundleError(f"{' '.join(cmd[3:6])} ... failed:\n{tail}")
    return res


def snapshot(dest: Path, source: str) -> str:
    """The files a bundle is made of, into `dest`: from the commit HEAD (`source="head"`, the
    default: a release holds committed code only, and a tree other people are editing cannot
    leak half-done work into it) or from the working tree as it is (`"tree"`).  Returns
    what BUNDLE records as `commit=`."""
    commit, dirty = source_state()
    paths = [*SOURCE, *SHIPPED]
    if source == "head":
        if commit == "unknown":
            raise BundleError("not a git checkout: use --source tree")
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD", "--", *paths],
            capture_output=True,
        )
        if archive.returncode != 0:
            raise BundleError(f"git archive: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tf:
            tf.extractall(dest, filter="data")
        return commit
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in paths:
        p, q = ROOT / name, dest / name
        q.parent.mkdir(parents=True, exist_ok=True)
        if p.is_dir():
            shutil.copytree(p, q, ignore=ignore)
        else:
            shutil.copy2(p, q)
    return commit + (" (with uncommitted changes)" if dirty else "")


def build_wheel(src: Path, version: str, out: Path) -> Path:
    """edgeloop's wheel (`pip wheel --no-deps`) from a snapshot, its version set."""
    pyproject = (src / "pyproject.toml").read_text()
    pyproject, n = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject, count=1)
    if n != 1:
        raise BundleError('pyproject.toml: no `version = "..."` line')
    (src / "pyproject.toml").write_text(pyproject)
    out.mkdir(parents=True, exist_ok=True)
    _pip(["wheel", "-q", "--no-deps", "-w", str(out), str(src)])
    wheels = sorted(out.glob(f"edgeloop-{version}-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"expected one edgeloop {version} wheel in {out}, found {wheels}")
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    missing = [m for m in WHEEL_MUST_HOLD if m not in names]
    if missing:
        raise BundleError(f"{wheels[0].name} lacks {missing} (pyproject package-data)")
    return wheels[0]


def platform_args(arch: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", f"{p}_{arch}"]
    return args


def fetch_dependencies(arch: str, cache: Path, requirements: list[str]) -> None:
    """Every runtime dependency's wheel for `arch` into `cache` (reused between builds)."""
    cache.mkdir(parents=True, exist_ok=True)
    for name in PURE_SDIST_ONLY:
        spec = next((r for r in requirements if re.match(rf"{name}\b", r)), name)
        _pip(["wheel", "-q", "--no-deps", "-w", str(cache), spec])
    _pip(
        [
            "download",
            "-q",
            "-d",
            str(cache),
            "--find-links",
            str(cache),
            *platform_args(arch),
            *requirements,
        ]
    )


def resolve_offline(arch: str, cache: Path, wheel: Path, version: str) -> list[Path]:
    """The exact wheels `pip install --no-index` picks on `arch` from the cache + our wheel."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            [
                "install",
                "-q",
                "--dry-run",
                "--ignore-installed",
                "--no-index",
                "--find-links",
                str(cache),
                "--find-links",
                str(wheel.parent),
                "--target",
                str(Path(tmp) / "t"),
                "--report",
                str(report),
                *platform_args(arch),
                f"edgeloop=={version}",
            ],
            isolated=True,
        )
        items = json.loads(report.read_text())["install"]
    files = []
    for item in items:
        url = item["download_info"]["url"]
        if not url.startswith("file://"):
            raise BundleError(f"{arch}: {url} is not a local file")
        path = Path(url.removeprefix("file://"))
        if path.suffix != ".whl":
            raise BundleError(f"{arch}: {path.name} is not a wheel")
        files.append(path)
    return sorted(files, key=lambda p: p.name.lower())


def source_state() -> tuple[str, list[str]]:
    """The commit the bundle is built from and the shipped paths with uncommitted changes."""
    paths = [*SOURCE, *SHIPPED]
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return "unknown", []
    return commit or "unknown", [ln[3:] for ln in status.splitlines() if ln.strip()]


def write_bundle(
    arch: str, version: str, wheels: list[Path], out: Path, src: Path, commit: str
) -> Path:
    name = f"edgeloop-{version}-{arch}"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="edgeloop-bundle-", dir=out) as tmp:
        stage = Path(tmp) / name
        (stage / "wheels").mkdir(parents=True)
        for w in wheels:
            shutil.copy2(w, stage / "wheels" / w.name)
        for rel in SHIPPED:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, stage / rel)
        lines = [
            f"version={version}",
            f"arch={arch}",
            f"python=cp{PYTHON_VERSION.replace('.', '')}",
            f"built={dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        ]
        lines.append(f"commit={commit}")
        for w in wheels:
            digest = hashlib.sha256(w.read_bytes()).hexdigest()
            lines.append(f"wheel={w.name} sha256={digest}")
        (stage / "BUNDLE").write_text("\n".join(lines) + "\n")
        partial = Path(tmp) / f"{name}.tar.gz"
        # wheels are zip files already: a light gzip level costs little and saves as much
        with tarfile.open(partial, "w:gz", compresslevel=1) as tf:
            tf.add(stage, arcname=name)
        os.replace(partial, target)
    return target


def build(
    arches: list[str],
    version: str | None,
    out: Path,
    cache: Path,
    log=print,
    source: str = "head",
) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bundle-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        commit = snapshot(src, source)
        proj = tomllib.loads((src / "pyproject.toml").read_text())["project"]
        version = version or proj["version"]
        requirements = list(proj["dependencies"])
        _, dirty = source_state()
        if dirty and source == "head":
            log(f"bundle: from HEAD {commit[:12]}; not in it: uncommitted {', '.join(dirty[:5])}")
        elif dirty:
            log(f"bundle: warning: uncommitted changes are built in: {', '.join(dirty[:5])}")
        t0 = time.monotonic()
        wheel = build_wheel(src, version, Path(tmp) / "wheel")
        log(f"bundle: {wheel.name} built in {time.monotonic() - t0:.1f} s")
        made = []
        for arch in arches:
            t0 = time.monotonic()
            fetch_dependencies(arch, cache / arch, requirements)
            wheels = resolve_offline(arch, cache / arch, wheel, version)
            path = write_bundle(arch, version, wheels, out, src, commit)
            mb = path.stat().st_size / 1e6
            log(
                f"bundle: {path} ({mb:.1f} MB, {len(wheels)} wheels) "
                f"in {time.monotonic() - t0:.1f} s"
            )
            made.append(path)
    return made


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--arch",
        action="append",
        choices=ARCHES,
        help="repeatable; default: both (x86_64 and aarch64)",
    )
    ap.add_argument("--host-arch", action="store_true", help=f"only {platform.machine()}")
    ap.add_argument("--version", help="the version to stamp (default: pyproject.toml's)")
    ap.add_argument(
        "--source",
        choices=("head", "tree"),
        default="head",
        help="build from the commit HEAD (default) or the working tree with its changes",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    ap.add_argument(
        "--cache",
        type=Path,
        default=default_cache(),
        help="per-arch wheel cache reused between builds "
        "(default: ~/.cache/edgeloop/bundle-wheels)",
    )
    a = ap.parse_args(argv)
    arches = a.arch or list(ARCHES)
    if a.host_arch:
        if platform.machine() not in ARCHES:
            ap.error(f"host arch {platform.machine()} is not one of {ARCHES}")
        arches = [platform.machine()]
    try:
        build(arches, a.version, a.out, a.cache, source=a.source)
    except BundleError as e:
        print(f"bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
