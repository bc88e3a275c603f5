"""systemd/install.sh run into a temporary root (DESTDIR): idempotent, config-preserving,
and its uninstall removes what it installed.

No systemd and no root needed: with DESTDIR set the script skips user creation and
systemctl.  The package goes in as a wheel the test assembles from this checkout
(`_make_wheel`: the project's packages plus dist-info from pyproject.toml), with --no-deps,
because building one with setuptools >= 69 would need build isolation and so the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "systemd" / "install.sh"


def _make_wheel(out_dir: Path) -> Path:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist_info = f"{name}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for pkg in ("agent", "drivers", "hw_sim"):
        for p in sorted((ROOT / pkg).rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
                files[p.relative_to(ROOT).as_posix()] = p.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: edgeloop-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    scripts = "".join(f"{k} = {v}\n" for k, v in project["scripts"].items())
    files[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\n{scripts}".encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_wheel(tmp_path_factory.mktemp("wheel"))


def _run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["DESTDIR"] = str(root)
    res = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def _install(root: Path, wheel: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run(root, "--wheel", str(wheel), "--no-deps", "--python", _base_python(), *extra)


def _base_python() -> str:
    """The interpreter behind this venv: a new venv is made from it, as on a gateway."""
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> content hash (or 'dir'/'link'); bytecode caches left out, since
    pyc headers carry source mtimes that a reinstall refreshes."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if "__pycache__" in p.parts:
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mode:o}"
    return out


def test_install_twice_gives_the_same_tree(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    first = _install(root, wheel)
    assert "skipped (DESTDIR set): systemctl daemon-reload" in first.stdout
    assert "kernel AOT module: not built (no numba in " in first.stdout  # --no-deps
    tree1 = _tree(root)
    for rel in (
        "etc/systemd/system/edgeloop.service",
        "etc/edgeloop/edgeloop.yaml",
        "opt/edgeloop/versions/0.1.0/bin/python",
        "opt/edgeloop/versions/0.1.0/bin/edgeloop",
        "opt/edgeloop/versions/0.1.0/share/edgeloop/edgeloop.schema.json",
        "opt/edgeloop/share/doc",
    ):
        assert rel in tree1, rel
    assert (root / "etc/systemd/system/edgeloop.service").read_bytes() == (
        ROOT / "systemd/edgeloop.service"
    ).read_bytes()
    assert (root / "etc/edgeloop").stat().st_mode & 0o777 == 0o750
    assert (root / "etc/edgeloop/edgeloop.yaml").stat().st_mode & 0o777 == 0o640
    # one venv per version, `current` links to it; on the PATH: /usr/local/bin/edgeloop ->
    # the current version's command (absolute, as on the box)
    assert tree1["opt/edgeloop/current"] == "link:versions/0.1.0"
    assert tree1["opt/edgeloop/config"] == "link:current/share/edgeloop"
    assert tree1["usr/local/bin/edgeloop"] == "link:/opt/edgeloop/current/bin/edgeloop"
    _install(root, wheel)
    assert _tree(root) == tree1


def test_an_unversioned_install_is_converted(tmp_path: Path, wheel: Path) -> None:
    """/opt/edgeloop/venv of an install before versioned venvs goes once `current` exists."""
    root = tmp_path / "root"
    old = root / "opt/edgeloop/venv/bin"
    old.mkdir(parents=True)
    (old / "edgeloop").write_text("#!/bin/sh\n")
    res = _install(root, wheel)
    assert "removed" in res.stdout and "unversioned install" in res.stdout
    assert not (root / "opt/edgeloop/venv").exists()
    assert os.readlink(root / "opt/edgeloop/current") == "versions/0.1.0"


def test_installed_config_is_the_inert_template_that_check_refuses(
    tmp_path: Path, wheel: Path
) -> None:
    """Not the simulator's demo (a loop in auto writing outputs): a template with its device
    disabled and no loops, which `check` refuses until edited, so the service never starts
    on it."""
    root = tmp_path / "root"
    _install(root, wheel)
    cfg = root / "etc/edgeloop/edgeloop.yaml"
    assert cfg.read_bytes() == (ROOT / "config/edgeloop.template.yaml").read_bytes()
    edgeloop = [sys.executable, "-m", "agent"]  # the staged venv is installed --no-deps
    res = subprocess.run([*edgeloop, "check", str(cfg)], capture_output=True, text=True)
    assert res.returncode == 78
    assert f"{cfg}:" in res.stderr and "template: this is the unedited template" in res.stderr
    edited = tmp_path / "edited.yaml"
    edited.write_text(
        "".join(ln for ln in cfg.read_text().splitlines(True) if not ln.startswith("template:"))
    )
    res = subprocess.run([*edgeloop, "check", str(edited)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "(1 disabled)" in res.stdout and "0 read requests" in res.stdout
    text = cfg.read_text()
    assert "control:" not in text.replace("# Control", "") and "mode: auto" not in text


def test_installed_package_is_importable_from_the_venv(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    _install(root, wheel)
    py = root / "opt/edgeloop/current/bin/python"
    res = subprocess.run(
        [
            str(py),
            "-c",
            "import importlib.metadata as m, agent.telemetry.sdnotify as s; "
            "print(m.version('edgeloop'), s.notify('READY=1'))",
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0.1.0", "False"]


def test_existing_config_is_kept(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    _install(root, wheel)
    cfg = root / "etc/edgeloop/edgeloop.yaml"
    cfg.write_text("site: my-plant\n")
    res = _install(root, wheel)
    assert cfg.read_text() == "site: my-plant\n"
    assert "kept" in res.stdout
    dist = root / "etc/edgeloop/edgeloop.yaml.dist"
    assert dist.read_bytes() == (ROOT / "config/edgeloop.template.yaml").read_bytes()


def test_uninstall_keeps_config_and_history_purge_removes_all(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    _install(root, wheel)
    history = root / "var/lib/edgeloop/history.db"  # what systemd's StateDirectory= holds
    history.parent.mkdir(parents=True)
    history.write_bytes(b"SQLite format 3\0")
    numba_cache = root / "var/cache/edgeloop/numba/x.nbi"
    numba_cache.parent.mkdir(parents=True)
    numba_cache.write_bytes(b"cache")

    _run(root, "--uninstall")
    left = {k for k, v in _tree(root).items() if v != "dir"}
    assert left == {
        "etc/edgeloop/edgeloop.yaml",
        "var/lib/edgeloop/history.db",
    }
    _run(root, "--uninstall")  # again: nothing to do, no error

    _run(root, "--uninstall", "--purge")
    assert {k for k, v in _tree(root).items() if v != "dir"} == set()
    assert not (root / "etc/edgeloop").exists()
    assert not (root / "var/lib/edgeloop").exists()


def _unit_numba_cache_dir(root: Path) -> Path:
    """NUMBA_CACHE_DIR as the installed unit sets it for the service (%C: /var/cache)."""
    unit = (root / "etc/systemd/system/edgeloop.service").read_text()
    (value,) = re.findall(r"^Environment=NUMBA_CACHE_DIR=(\S+)$", unit, re.M)
    return root / value.replace("%C/", "var/cache/")


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to take away")
def test_the_kernel_module_build_at_install_names_what_is_missing_and_goes_on(
    tmp_path: Path, wheel: Path
) -> None:
    """install.sh builds the kernel's AOT module where the service will look for it; here
    without g++ (a PATH of everything else), so it says why in one line, records the failure
    there for the service, and the install succeeds.  (The build itself: test_bundle.py.)"""
    root = tmp_path / "root"
    _install(root, wheel)
    # the staged venv is --no-deps: numba comes from this interpreter's site-packages
    (site,) = (root / "opt/edgeloop/versions/0.1.0/lib").glob("python3*/site-packages")
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        for p in Path(d).glob("*") if Path(d).is_dir() else ():
            cxx = re.search(r"(^|-)[gc]\+\+(-[0-9.]+)?$", p.name)  # g++, x86_64-linux-gnu-g++-12
            if not cxx and not (bin_dir / p.name).is_symlink():
                (bin_dir / p.name).symlink_to(p)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "CXX")}
    env.update(DESTDIR=str(root), PATH=str(bin_dir))
    res = subprocess.run(
        ["bash", str(SCRIPT), "--wheel", str(wheel), "--no-deps", "--python", _base_python()],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (line,) = [ln for ln in res.stdout.splitlines() if "kernel AOT module" in ln]
    assert line.startswith("install.sh: kernel AOT module for this CPU")
    assert "not built (the AOT kernel needs a C compiler (cc/gcc), g++" in line
    assert "apt-get install build-essential" in line and "conda" not in line
    assert line.endswith("the service runs the kernel on numba's JIT")
    # recorded where the service looks: aot.out_dir() under the unit's NUMBA_CACHE_DIR
    probe = (
        "import os, sys; from agent.kernel import aot; "
        "os.environ['NUMBA_CACHE_DIR'] = sys.argv[1]; print(aot.failure_path())"
    )
    py = root / "opt/edgeloop/current/bin/python"
    where = subprocess.run(
        [str(py), "-c", probe, str(_unit_numba_cache_dir(root))],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    failed = Path(where.stdout.strip())
    assert failed.parent == root / "var/cache/edgeloop/numba/edgeloop-aot"
    rec = json.loads(failed.read_text())
    assert rec["kind"] == "toolchain" and "g++" in rec["reason"]


def test_dry_run_changes_nothing(tmp_path: Path, wheel: Path) -> None:
    root = tmp_path / "root"
    res = _install(root, wheel, "--dry-run")
    assert not root.exists()
    assert "+ install -m 0644" in res.stdout and "edgeloop.service" in res.stdout
    assert "-m venv" in res.stdout
    assert "-m agent.kernel.aot --out " in res.stdout


def test_bad_options_are_refused(tmp_path: Path) -> None:
    res = _run(tmp_path, "--frobnicate", check=False)
    assert res.returncode == 2 and "unknown option" in res.stderr
    res = _run(tmp_path, "--purge", check=False)
    assert res.returncode == 2 and "--purge only goes with --uninstall" in res.stderr
    res = _run(tmp_path, "--python", "/nonexistent/python3", check=False)
    assert res.returncode == 1 and "not found" in res.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_is_shellcheck_clean() -> None:
    res = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
