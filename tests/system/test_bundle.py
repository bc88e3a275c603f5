"""The offline bundle (tools/bundle.py, `make bundle`) installed by `install.sh --bundle`
into a temporary root: no network during the install, the installed command runs, an
upgrade keeps the previous version and `--rollback` returns to it.

Two bundles for this machine's architecture are built once per module from the commit HEAD
(as `make bundle` does; other work in progress in the tree stays out): HEAD's version and the
same code stamped one release later (`tools/bundle.py --version`).  The dependency
wheels come from a per-arch cache (~/.cache/edgeloop/bundle-wheels; pip skips what is
there), so after the first build only edgeloop's own wheel is rebuilt.  Every install runs
with the proxies pointing at a closed port and a dead index in PIP_INDEX_URL: a bundle
that needed the network would fail here.  The build of both architectures is a long test
(EDGELOOP_LONG=1).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "systemd" / "install.sh"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NEXT = f"{VERSION}.post1"  # "one release later" for the upgrade
ARCH = platform.machine()
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3.11"

pytestmark = [
    pytest.mark.skipif(ARCH not in ("x86_64", "aarch64"), reason=f"no bundle for {ARCH}"),
    pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the bundle's wheels are cp311"),
    pytest.mark.timeout(600),
]

sys.path.insert(0, str(ROOT / "tools"))
import bundle  # noqa: E402  (tools/ is not a package)

sys.path.pop(0)


# a checkout: from HEAD, as `make bundle`; an unpacked source tarball: the tree
GIT = (ROOT / ".git").exists()


def _build(out: Path, version: str, arches: list[str]) -> list[Path]:
    return bundle.build(
        arches,
        version,
        out,
        bundle.default_cache(),
        log=lambda _msg: None,
        source="head" if GIT else "tree",
    )


def _shipped(rel: str) -> bytes:
    """A file as the bundle's code has it (HEAD in a checkout)."""
    if not GIT:
        return (ROOT / rel).read_bytes()
    cmd = ["git", "-C", str(ROOT), "show", f"HEAD:{rel}"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    (first,) = _build(out, VERSION, [ARCH])
    (second,) = _build(out, NEXT, [ARCH])
    return {VERSION: first, NEXT: second}


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    env.update(
        http_proxy=dead, https_proxy=dead, HTTP_PROXY=dead, HTTPS_PROXY=dead,
        PIP_INDEX_URL=f"{dead}/simple", PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="2",
    )  # fmt: skip
    return env


def _install_sh(
    root: Path, *args: str, check: bool = True, script: Path = SCRIPT
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["bash", str(script), "--root", str(root), "--python", str(BASE_PYTHON), *args],
        capture_output=True,
        text=True,
        env=_offline_env(),
        timeout=300,
    )
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def _edgeloop(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command through the `current` link, with a bare PATH, outside the
    checkout (so nothing of this tree can be imported)."""
    exe = root / "opt/edgeloop/current/bin/edgeloop"
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "NUMBA_CACHE_DIR": str(cwd / "nb")},
        timeout=120,
    )


def _link(root: Path, rel: str) -> str:
    return os.readlink(root / rel)


@pytest.fixture(scope="module")
def installed(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    t0 = time.monotonic()
    res = _install_sh(root, "--bundle", str(bundles[VERSION]))
    print(f"install.sh --bundle: {time.monotonic() - t0:.1f} s")
    assert f"edgeloop {VERSION}" in res.stdout
    assert "not started until" in res.stdout  # the inert template
    # the kernel's AOT module, built for this CPU where the unit's NUMBA_CACHE_DIR points
    aot_dir = root / "var/cache/edgeloop/numba/edgeloop-aot"
    (line,) = [ln for ln in res.stdout.splitlines() if "kernel AOT module" in ln]
    assert f"(~25 s on a PC, longer on a Pi): 4 modules in {aot_dir} (" in line, line
    assert len(list(aot_dir.glob("_kernel_aot_*.so"))) == 4
    return root


def test_bundle_holds_this_arch_wheels_and_the_installer(bundles: dict[str, Path]) -> None:
    path = bundles[VERSION]
    assert path.name == f"edgeloop-{VERSION}-{ARCH}.tar.gz"
    with tarfile.open(path) as tf:
        names = tf.getnames()
        info = tf.extractfile(f"edgeloop-{VERSION}-{ARCH}/BUNDLE").read().decode()
    top = f"edgeloop-{VERSION}-{ARCH}/"
    assert all(n == top.rstrip("/") or n.startswith(top) for n in names)
    for rel in ("systemd/install.sh", "systemd/edgeloop.service", "config/edgeloop.schema.json"):
        assert top + rel in names, rel
    wheels = [Path(n).name for n in names if n.startswith(top + "wheels/")]
    assert not [n for n in names if n.endswith((".tar.gz", ".zip")) and "/wheels/" in n]
    assert f"edgeloop-{VERSION}-py3-none-any.whl" in wheels
    other = "aarch64" if ARCH == "x86_64" else "x86_64"
    for dep in ("numpy", "numba", "llvmlite", "ai_edge_litert", "pydantic_core", "pymodbus"):
        (whl,) = [w for w in wheels if w.lower().startswith(dep + "-")]
        assert other not in whl and ("cp311" in whl or "py3-none-any" in whl), whl
    assert f"version={VERSION}\narch={ARCH}\npython=cp311\n" in info
    assert info.count("wheel=") == len(wheels)


def test_bundle_install_runs_offline(
    installed: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    root = installed
    assert _link(root, "opt/edgeloop/current") == f"versions/{VERSION}"
    assert _link(root, "usr/local/bin/edgeloop") == "/opt/edgeloop/current/bin/edgeloop"
    res = _edgeloop(root, "--version", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"edgeloop {VERSION} (Python 3.11"), res.stdout
    # the shipped model travels in the wheel
    site = root / f"opt/edgeloop/versions/{VERSION}/lib/python3.11/site-packages"
    assert (site / "agent/models/heater_policy.tflite").stat().st_size > 1000
    # the installed config: the inert template, refused by `check`
    cfg = root / "etc/edgeloop/edgeloop.yaml"
    assert cfg.read_text().splitlines()[1:3] == [
        "# edgeloop configuration: the template systemd/install.sh installs as "
        "/etc/edgeloop/edgeloop.yaml.",
        "#",
    ]
    res = _edgeloop(root, "check", str(cfg), cwd=tmp_path)
    assert res.returncode == 78 and "unedited template" in res.stderr, res.stderr
    # an example config passes with the installed package and its dependencies alone
    example = tmp_path / "modbus_tcp.yaml"  # HEAD's, as the bundle's code
    example.write_bytes(_shipped("config/examples/modbus_tcp.yaml"))
    res = _edgeloop(root, "check", str(example), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # the schema sits where the config's modeline points (an absolute path on the box)
    first = cfg.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=/"), first
    schema = root / first.split("$schema=/", 1)[1]
    with tarfile.open(bundles[VERSION]) as tf:
        shipped = tf.extractfile(f"edgeloop-{VERSION}-{ARCH}/config/edgeloop.schema.json")
        assert json.loads(schema.read_text()) == json.load(shipped)
    assert "edgeloop" in json.loads(schema.read_text())["title"].lower()


def test_a_damaged_or_foreign_bundle_is_refused(bundles: dict[str, Path], tmp_path: Path) -> None:
    """Before anything is installed: a wheel that is not the one built (BUNDLE lists each
    with its sha256), a bundle for the other architecture."""
    with tarfile.open(bundles[VERSION]) as tf:
        tf.extractall(tmp_path, filter="data")
    top = tmp_path / f"edgeloop-{VERSION}-{ARCH}"
    script = top / "systemd/install.sh"
    (whl,) = (top / "wheels").glob("pymodbus-*.whl")
    data = bytearray(whl.read_bytes())
    data[len(data) // 2] ^= 0xFF
    whl.write_bytes(bytes(data))
    res = _install_sh(tmp_path / "root", script=script, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "do not match the list in its BUNDLE file" in res.stderr, res.stderr
    info = top / "BUNDLE"
    other = "aarch64" if ARCH == "x86_64" else "x86_64"
    info.write_text(info.read_text().replace(f"arch={ARCH}", f"arch={other}"))
    res = _install_sh(tmp_path / "root", script=script, check=False)
    assert res.returncode == 1 and f"this bundle is for {other}" in res.stderr, res.stderr
    assert not (tmp_path / "root").exists()


def test_dry_run_of_a_bundle_changes_nothing(bundles: dict[str, Path], tmp_path: Path) -> None:
    res = _install_sh(tmp_path / "root", "--bundle", str(bundles[VERSION]), "--dry-run")
    assert not (tmp_path / "root").exists()
    assert "--no-index --find-links" in res.stdout and f"versions/{VERSION}" in res.stdout


def test_dry_run_on_the_live_root_shows_the_layout_and_skips_absent_systemd(
    bundles: dict[str, Path],
) -> None:
    """No DESTDIR: the real paths, and systemctl only where systemd is the running init
    (in a container, as the tests usually run, it is skipped and said so). --dry-run: only
    printed, nothing written (it needs no root either)."""
    args = ["--python", str(BASE_PYTHON), "--dry-run", "--bundle", str(bundles[VERSION])]
    res = subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in _offline_env().items() if k != "DESTDIR"},
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert f"+ ln -sfn versions/{VERSION} /opt/edgeloop/current.new" in out
    assert "+ mv -Tf /opt/edgeloop/current.new /opt/edgeloop/current" in out
    assert "+ ln -sfn /opt/edgeloop/current/bin/edgeloop /usr/local/bin/edgeloop" in out
    assert f"-m venv /opt/edgeloop/versions/{VERSION}" in out
    assert (
        "+ runuser -u edgeloop -- env NUMBA_CACHE_DIR=/var/cache/edgeloop/numba "
        f"/opt/edgeloop/versions/{VERSION}/bin/python -m agent.kernel.aot "
        "--out /var/cache/edgeloop/numba/edgeloop-aot"
    ) in out
    if Path("/run/systemd/system").is_dir():
        assert "+ systemctl daemon-reload" in out
    else:
        assert "skipped (systemd not running): systemctl daemon-reload" in out
        assert "skipped (systemd not running): systemctl enable edgeloop.service" in out


def test_rollback_without_a_previous_version_is_refused(tmp_path: Path) -> None:
    res = _install_sh(tmp_path / "root", "--rollback", check=False)
    assert res.returncode == 1 and "no previous version" in res.stderr


def test_upgrade_keeps_the_previous_version_and_rollback_returns(
    installed: Path, bundles: dict[str, Path], tmp_path: Path
) -> None:
    root = installed
    versions = root / "opt/edgeloop/versions"
    cfg = root / "etc/edgeloop/edgeloop.yaml"
    # the operator edits the config (now it passes check); an old leftover version lies around
    edited = "".join(
        ln for ln in cfg.read_text().splitlines(True) if not ln.startswith("template:")
    )
    cfg.write_text(edited)
    (versions / "0.0.1/bin").mkdir(parents=True)

    # this time the way the README shows too: the unpacked bundle's own install.sh
    with tarfile.open(bundles[NEXT]) as tf:
        tf.extractall(tmp_path / "unpacked", filter="data")
    shipped = tmp_path / f"unpacked/edgeloop-{NEXT}-{ARCH}/systemd/install.sh"
    res = _install_sh(root, script=shipped)
    assert f"upgraded: {VERSION} -> {NEXT}" in res.stdout
    # check passed, so the service would be started (no systemd here: skipped)
    assert "systemctl start edgeloop.service" in res.stdout, res.stdout
    assert _link(root, "opt/edgeloop/current") == f"versions/{NEXT}"
    assert _link(root, "opt/edgeloop/previous") == f"versions/{VERSION}"
    assert sorted(p.name for p in versions.iterdir()) == sorted([VERSION, NEXT])
    assert cfg.read_text() == edited  # never overwritten
    assert (root / "etc/edgeloop/edgeloop.yaml.dist").exists()
    res = _edgeloop(root, "--version", cwd=tmp_path)
    assert res.stdout.startswith(f"edgeloop {NEXT} "), res.stdout + res.stderr

    res = _install_sh(root, "--rollback")
    assert f"rolled back: current is {VERSION} (was {NEXT}" in res.stdout
    assert "the service was not running; not started" in res.stdout  # after its check passed
    assert _link(root, "opt/edgeloop/current") == f"versions/{VERSION}"
    assert _link(root, "opt/edgeloop/previous") == f"versions/{NEXT}"
    res = _edgeloop(root, "--version", cwd=tmp_path)
    assert res.stdout.startswith(f"edgeloop {VERSION} "), res.stdout + res.stderr
    res = _edgeloop(root, "check", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr

    # rolling back again is rolling forward
    _install_sh(root, "--rollback")
    assert _link(root, "opt/edgeloop/current") == f"versions/{NEXT}"
    assert _link(root, "opt/edgeloop/previous") == f"versions/{VERSION}"

    # re-installing the current version converges in place; a config that fails `check`
    # is reported, kept, and nothing is started (exit 1)
    cfg.write_text(edited.replace("interval_ms: 1000", "interval_ms: -5"))
    res = _install_sh(root, "--bundle", str(bundles[NEXT]), check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "the configuration has errors" in res.stdout and "interval_ms" in res.stderr
    assert "upgraded" not in res.stdout and "systemctl start" not in res.stdout
    assert _link(root, "opt/edgeloop/current") == f"versions/{NEXT}"
    assert _link(root, "opt/edgeloop/previous") == f"versions/{VERSION}"
    assert "interval_ms: -5" in cfg.read_text()


@pytest.mark.slow
def test_make_bundle_builds_both_architectures(tmp_path: Path) -> None:
    """What `make bundle` ships: one tarball per architecture, each with its own wheels."""
    made = _build(tmp_path, VERSION, ["x86_64", "aarch64"])
    assert [p.name for p in made] == [
        f"edgeloop-{VERSION}-x86_64.tar.gz",
        f"edgeloop-{VERSION}-aarch64.tar.gz",
    ]
    for path, arch, other in zip(made, ("x86_64", "aarch64"), ("aarch64", "x86_64"), strict=True):
        with tarfile.open(path) as tf:
            wheels = [Path(n).name for n in tf.getnames() if "/wheels/" in n]
        binary = [w for w in wheels if not w.endswith("-none-any.whl")]
        assert binary and all(arch in w and other not in w for w in binary), binary
        for dep in ("numpy", "numba", "llvmlite", "ai_edge_litert", "pydantic_core"):
            assert any(w.lower().startswith(dep + "-") for w in binary), dep
