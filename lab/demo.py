"""`make demo`: the whole product on the simulated plant, then a summary and a report.

Starts `python -m hw_sim` (heater PLC over Modbus TCP, pump skid over OPC UA) with the demo
scenario of disturbances and faults, a loopback mosquitto when one is installed, and
`edgeloop run` on a copy of config/edgeloop.yaml pointed at them; an operator script changes
the loop's setpoint through the HTTP API while a status line shows progress.  After
DEMO_SECONDS everything is stopped with SIGTERM and the summary is computed from what the
agent itself stored (history database), what hw_sim logged as ground truth and what arrived
at the broker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# the operator's setpoint schedule: (fraction of the run, setpoint degC)
SP_SCHEDULE = ((0.0, 50.0), (0.25, 60.0), (0.55, 45.0), (0.8, 55.0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, proc: subprocess.Popen[Any] | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.1)
    return False


TOKEN_ENV = "EDGELOOP_HTTP_TOKEN"
TOKEN = secrets.token_hex(16)  # the control endpoints refuse to work without a bearer token


def _http(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET"
    )
    req.add_header("Authorization", f"Bearer {TOKEN}")
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=2.0) as r:
        raw = r.read().decode()
    return json.loads(raw) if raw.lstrip().startswith(("{", "[")) else raw


@dataclass
class Ports:
    modbus: int = field(default_factory=free_port)
    opcua: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    mqtt: int = field(default_factory=free_port)


def demo_config(
    base_path: Path, ports: Ports, out: Path, mqtt: bool, token: bool = True
) -> dict[str, Any]:
    """config/edgeloop.yaml re-pointed at this run's ports and files (everything else as is)."""
    cfg = yaml.safe_load(base_path.read_text())
    for dev in cfg["devices"]:
        if dev["driver"] == "modbus" and dev.get("transport", "tcp") == "tcp":
            dev["port"] = ports.modbus
        elif dev["driver"] == "opcua":
            dev["endpoint"] = f"opc.tcp://127.0.0.1:{ports.opcua}/edgeloop/sim"
    cfg.setdefault("store", {})["path"] = str(out / "history.db")
    cfg.setdefault("http", {})["port"] = ports.http
    if token:
        cfg["http"]["bearer_token_env"] = TOKEN_ENV
    pub = cfg.setdefault("publish", {})
    pub["enabled"] = mqtt
    pub.setdefault("outbox", {})["path"] = str(out / "outbox.db")
    pub.setdefault("mqtt", {}).update({"host": "127.0.0.1", "port": ports.mqtt})
    return cfg


class MqttCounter:
    """Counts what arrives at the broker under the agent's topic prefix (a real subscriber)."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages = 0
        self.bytes = 0
        self.topics: dict[str, int] = {}
        self._c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgeloop-demo-counter")
        self._c.on_message = self._on_message
        self._c.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self._c.connect("127.0.0.1", port)
        self._c.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self.messages += 1
        self.bytes += len(msg.payload)
        kind = (
            msg.topic.split("/")[-1]
            if "/event" in msg.topic
            else "/".join(msg.topic.split("/")[2:])
        )
        self.topics[kind] = self.topics.get(kind, 0) + 1

    def close(self) -> None:
        self._c.loop_stop()
        self._c.disconnect()


def _start_mosquitto(port: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if exe is None:
        return None
    conf = out / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 100000\nlog_dest file {out / 'mosquitto.log'}\n"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc if wait_port(port, 5.0, proc) else None


def stop_process(proc: subprocess.Popen[Any] | None, timeout_s: float = 10.0) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_sim(
    ports: Ports,
    log: Path,
    *extra: str,
    opcua: bool = True,
    env: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """`python -m hw_sim` on this run's ports, output appended to `log`; returns once its
    servers accept connections (RuntimeError with the log's tail if it died or never did).
    `preexec_fn` runs in the child before exec (the benches pin the simulator to a core)."""
    args = [sys.executable, "-m", "hw_sim", "--modbus-port", str(ports.modbus)]
    args += ["--opcua-port", str(ports.opcua)] if opcua else ["--no-opcua"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*args, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=preexec_fn,
        )
    up = wait_port(ports.modbus, timeout_s, proc) and (
        not opcua or wait_port(ports.opcua, timeout_s, proc)
    )
    if not up:
        stop_process(proc)
        raise RuntimeError(f"hw_sim did not start:\n{log.read_text()[-4000:]}")
    return proc


def start_agent(
    cfg_path: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m agent run cfg_path`, output appended to `log`; the kernel cache is the
    venv's, so a test or the demo does not compile it again."""
    env = {
        "NUMBA_CACHE_DIR": str(ROOT / ".venv" / "numba-cache"),
        **(os.environ if env is None else env),
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", str(cfg_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def _status_line(http_port: int, t: float, total: float) -> str:
    try:
        st = _http(http_port, "/control")
    except Exception:
        return f"[{t:5.0f}/{total:.0f} s] waiting for the agent..."
    parts = [f"[{t:5.0f}/{total:.0f} s]"]
    for name, s in (st.get("loops", st) if isinstance(st, dict) else {}).items():
        if not isinstance(s, dict):
            continue
        pv, sp, mv = s.get("pv"), s.get("setpoint"), s.get("output")
        active = s.get("active") or "starting"  # no step yet: healthy window, first inputs
        parts.append(
            f"{name}: {s.get('mode') or '?'}/{active} PV={_f(pv)} SP={_f(sp)} MV={_f(mv)}%"
        )
    return " ".join(parts)


def _f(v: Any) -> str:
    try:
        return f"{float(v):.1f}"
    except (TypeError, ValueError):
        return "-"


def warm_kernel_cache(cfg_path: Path) -> float:
    """Compile the jitted kernel once (numba writes its on-disk cache), so the agent's start
    is warm: on a fresh clone the cold compile otherwise eats the first seconds of the demo.
    Returns the seconds it took (a few on a cold cache, well under one when warm)."""
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from agent.config import load_config; from agent.tags import "
         "compile_config; from agent.kernel import KernelRuntime; c = compile_config("
         "load_config(sys.argv[1], check_files=False)); "
         "KernelRuntime(c.config.kernel, c.table).warmup()", str(cfg_path)],
        cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
    )  # fmt: skip
    return time.monotonic() - t0


def run_demo(seconds: float, out: Path, quiet: bool = False) -> int:
    """Run the demo for `seconds`; returns the exit status (0 when every part worked)."""
    from lab.demo_summary import summarise

    out.mkdir(parents=True, exist_ok=True)
    for f in (
        "history.db",
        "history.db-wal",
        "history.db-shm",
        "outbox.db",
        "outbox.db-wal",
        "outbox.db-shm",
        "faults.jsonl",
    ):
        (out / f).unlink(missing_ok=True)
    ports = Ports()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    mosq = _start_mosquitto(ports.mqtt, out)
    where = f"on 127.0.0.1:{ports.mqtt}" if mosq else "not installed - running without MQTT"
    say(f"mosquitto: {where}")
    cfg = demo_config(ROOT / "config" / "edgeloop.yaml", ports, out, mqtt=mosq is not None)
    cfg_path = out / "edgeloop.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    say(f"numba kernel cache: ready in {warm_kernel_cache(cfg_path):.1f} s")
    counter = None
    if mosq is not None:
        prefix = cfg["publish"].get("mqtt", {}).get("topic_prefix", "edgeloop")
        counter = MqttCounter(ports.mqtt, prefix)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_ENV: TOKEN}
    agent_log = open(out / "agent.log", "w")  # noqa: SIM115
    sim = agent = None
    rc_agent: int | None = None
    t_start_wall = time.time()
    try:
        try:
            sim = start_sim(
                ports,
                out / "hw_sim.log",
                "--scenario",
                str(ROOT / "hw_sim" / "scenarios" / "demo.yaml"),
                "--faults-log",
                str(out / "faults.jsonl"),
                "--seed",
                "7",
                env=env,
                timeout_s=20,
            )
        except RuntimeError:
            say("hw_sim did not start; see", out / "hw_sim.log")
            return 1
        say(
            f"hw_sim: Modbus TCP 127.0.0.1:{ports.modbus}, OPC UA opc.tcp://127.0.0.1:{ports.opcua}"
        )
        t_start_wall = time.time()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", str(cfg_path)],
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        if not wait_port(ports.http, 30, agent):
            say("edgeloop run did not start; see", out / "agent.log")
            return 1
        say(
            f"edgeloop run: http://127.0.0.1:{ports.http}/metrics and /control need the bearer "
            f"token {TOKEN}\n  curl -H 'Authorization: Bearer {TOKEN}' "
            f"http://127.0.0.1:{ports.http}/metrics\n  log {out / 'agent.log'}"
        )
        loop_name = (cfg.get("control", {}).get("loops") or [{}])[0].get("name")
        t0 = time.monotonic()
        sp_idx = -1
        tty = sys.stdout.isatty()
        while (t := time.monotonic() - t0) < seconds:
            if agent.poll() is not None:
                say(f"\nedgeloop run exited early ({agent.returncode}); see {out / 'agent.log'}")
                return 1
            nxt = max(i for i, (frac, _) in enumerate(SP_SCHEDULE) if t >= frac * seconds)
            if loop_name and nxt != sp_idx:
                with contextlib.suppress(Exception):
                    _http(
                        ports.http, f"/control/{loop_name}/setpoint", {"value": SP_SCHEDULE[nxt][1]}
                    )
                    sp_idx = nxt
            line = _status_line(ports.http, t, seconds)
            if not quiet:
                print(
                    ("\r" + line.ljust(110)) if tty else line, end="" if tty else "\n", flush=True
                )
            time.sleep(1.0 if tty else 5.0)
        say("")
        t_stop = time.monotonic()
        rc_agent = stop_process(agent, 10.0)
        say(f"edgeloop run stopped with status {rc_agent} in {time.monotonic() - t_stop:.1f} s")
    finally:
        stop_process(agent, 5.0)
        stop_process(sim, 10.0)
        if counter is not None:
            time.sleep(0.5)
            counter.close()
        stop_process(mosq, 5.0)

        agent_log.close()
    summary = summarise(
        cfg=cfg,
        out=out,
        t_from=t_start_wall,
        t_to=time.time(),
        mqtt=counter,
        seconds=seconds,
    )
    say(summary.text)
    (out / "summary.json").write_text(json.dumps(summary.data, indent=2, default=float))
    return 0 if (rc_agent == 0 and summary.ok) else 1


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "120"))
    out = Path(os.environ.get("DEMO_OUT", str(ROOT / "out" / "demo")))
    return run_demo(seconds, out)


if __name__ == "__main__":
    sys.exit(main())
