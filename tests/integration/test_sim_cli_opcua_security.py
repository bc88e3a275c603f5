"""`python -m hw_sim --opcua-certs DIR --opcua-user NAME:PASSWORD` as a process.

The simulator started from the command line must offer the secure OPC UA policies and the
user login the in-process fixtures get, print where the certificates are, reuse them on the
next start, and still stop with exit 0 on SIGTERM.  The client is plain asyncua (no edgeloop
code), connecting as `config/examples/opcua_secure.yaml` describes: Basic256Sha256
SignAndEncrypt, a client certificate, the server certificate pinned, user and password.
"""

from __future__ import annotations

import math
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies

from tests.fixtures.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0


class Sim:
    """One `python -m hw_sim` process and the lines it printed until it was running."""

    def __init__(self, certs: Path, *extra: str) -> None:
        self.modbus_port, self.opcua_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hw_sim",
                "--modbus-port",
                str(self.modbus_port),
                "--opcua-port",
                str(self.opcua_port),
                "--opcua-certs",
                str(certs),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.banner = self._until("hw_sim: running")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _until(self, marker: str) -> str:
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {marker!r} within {START_TIMEOUT_S} s: {''.join(seen)}")
            if line is None:
                pytest.fail(f"hw_sim exited ({self.proc.wait()}): {''.join(seen)}")
            seen.append(line)
            if marker in line:
                return "".join(seen)

    def stop(self) -> tuple[int, str]:
        """SIGTERM; the exit status and everything printed after start-up."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=15)
        rest: list[str] = []
        while (line := self.lines.get(timeout=5)) is not None:
            rest.append(line)
        return rc, "".join(rest)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def printed(self, pattern: str) -> re.Match[str]:
        m = re.search(pattern, self.banner, re.MULTILINE)
        assert m, f"{pattern!r} not in output:\n{self.banner}"
        return m


def _paths(sim: Sim) -> tuple[Path, str, Path, Path, str]:
    """Server cert, its fingerprint, client cert, client key, client URI, as printed."""
    srv = sim.printed(r"server certificate (\S+) \(SHA-256 ([0-9A-F:]+)\)")
    cli = sim.printed(r"client certificate (\S+) key (\S+) \(URI (\S+)\)")
    return Path(srv[1]), srv[2], Path(cli[1]), Path(cli[2]), cli[3]


async def _secure_client(endpoint: str, server_cert: Path, cert: Path, key: Path, uri: str):
    c = Client(endpoint, timeout=5)
    c.application_uri = uri
    await c.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        str(cert),
        str(key),
        server_certificate=str(server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    return c


async def test_secure_user_login_from_the_command_line(tmp_path: Path) -> None:
    certs = tmp_path / "pki"
    sim = Sim(certs, "--opcua-user", "op:pw", "--opcua-user", "eng:s3:cret")
    try:
        endpoint = sim.printed(r"opc ua (opc\.tcp://\S+)")[1]
        assert endpoint == f"opc.tcp://127.0.0.1:{sim.opcua_port}/edgeloop/sim"
        server_cert, fp, client_cert, client_key, uri = _paths(sim)
        for p in (server_cert, client_cert, client_key):
            assert p.is_file() and p.parent == certs.resolve(), p
        assert "Basic256Sha256" in sim.printed(r"opc ua security .*$")[0]
        assert "users eng, op" in sim.banner
        assert "cret" not in sim.banner  # passwords are never printed

        endpoints = await Client(endpoint, timeout=5).connect_and_get_server_endpoints()
        offered = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
        assert ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt) in offered

        c = await _secure_client(endpoint, server_cert, client_cert, client_key, uri)
        c.set_user("op")
        c.set_password("pw")
        async with c:
            assert c.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
            current = await c.get_node("ns=2;s=Pump.MotorCurrent").read_value()
        assert math.isfinite(current) and 0.0 <= current <= 60.0

        # a password containing ':' works, a wrong one gets no session
        c = await _secure_client(endpoint, server_cert, client_cert, client_key, uri)
        c.set_user("eng")
        c.set_password("s3:cret")
        async with c:
            assert math.isfinite(await c.get_node("ns=2;s=Pump.Flow").read_value())
        c = await _secure_client(endpoint, server_cert, client_cert, client_key, uri)
        c.set_user("op")
        c.set_password("wrong")
        with pytest.raises(ua.UaStatusCodeError) as err:
            await c.connect()
        assert type(err.value).__name__ in ("BadUserAccessDenied", "BadIdentityTokenRejected")

        rc, out = sim.stop()
        assert rc == 0, out
        assert "hw_sim: stopped" in out
    finally:
        sim.kill()

    # the next start reuses the certificates: a gateway that pinned them keeps working
    again = Sim(certs)
    try:
        assert _paths(again)[1] == fp
        assert "users" not in again.banner
        rc, out = again.stop()
        assert rc == 0, out
    finally:
        again.kill()


@pytest.mark.parametrize("bad", ["op", ":pw", "op:"])
def test_malformed_user_is_refused_without_echoing_it(bad: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hw_sim", "--opcua-user", bad, "--print-map"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "expected NAME:PASSWORD" in r.stderr
    assert "pw" not in r.stderr


def test_duplicate_user_is_refused() -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hw_sim",
            "--modbus-port",
            str(free_port()),
            "--opcua-port",
            str(free_port()),
            "--opcua-user",
            "op:a",
            "--opcua-user",
            "op:b",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "--opcua-user given twice for op" in r.stderr
