"""`edgeloop browse opc.tcp://HOST:PORT[/path]`: walk an OPC UA address space, print tag lines.

Connects with the OPC UA driver's own code (`drivers.opcua.OpcUaDriver.connect`: the same
security policy/mode, pinned or trusted server certificate, client certificate and login as
a configured device), then browses breadth-first from `--root` (default the Objects folder)
along hierarchical references, at most `--depth` levels deep and at most `--max-nodes` nodes
in all.  Every readable scalar variable of a type edgeloop stores becomes a tag line:

    - {name: pump_flow, node: "ns=2;s=Pump.Flow", type: float64, unit: m3/h, min: 0, max: 80}

`type` comes from the DataType attribute (subtypes resolved to their built-in base type),
`unit` from the EngineeringUnits property (its DisplayName), `min`/`max` from the EURange
property, `writable: true` when AccessLevel and UserAccessLevel both grant CurrentWrite.
Properties themselves (HasProperty children) are not tags.  The Server object (i=2253, the
server's own diagnostics) is skipped unless it is the root.  Requests: one Browse per level
chunk, one Read per chunk of attributes (the server's MaxNodesPerRead), all read-only.

Output: a table (default), `--yaml` (tag lines to paste under a poll group's `tags:`) or
`--json`.  Exit status: 0 tags found, 1 none found, 2 bad arguments, 3 connect failed.

This module is the command (arguments, connection, exit status); the walk is
`agent.commands._browse_walk`, the names and output formats `agent.commands._browse_output`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent.commands._browse_output import (
    assign_names,
    format_table,
    format_yaml,
    json_tag,
    matches,
)
from agent.commands._browse_walk import BrowseError, Found, Walker

if TYPE_CHECKING:
    from drivers.opcua_config import OpcUaDevice

HELP = "browse an OPC UA server and print ready-to-paste tag lines (node, type, unit, range)"

EX_CONNECT = 3
DEFAULT_DEPTH = 6
DEFAULT_MAX_NODES = 5000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("endpoint", help="server endpoint, opc.tcp://HOST:PORT[/path]")
    p.add_argument("--root", default="i=85", help="NodeId to start from (i=85, Objects)")
    p.add_argument(
        "--depth", type=int, default=DEFAULT_DEPTH, help=f"levels below the root ({DEFAULT_DEPTH})"
    )
    p.add_argument(
        "--max-nodes",
        type=int,
        default=DEFAULT_MAX_NODES,
        help=f"stop after visiting this many nodes ({DEFAULT_MAX_NODES})",
    )
    p.add_argument(
        "--match",
        metavar="PATTERN",
        help="only variables whose browse path, browse name or node id matches this "
        "shell pattern (case-insensitive), e.g. '*Temp*' or 'PumpSkid/Setpoints/*'",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--yaml", action="store_true", help="print tag lines to paste under a poll group's tags:"
    )
    out.add_argument("--json", action="store_true", help="print a JSON document")
    p.add_argument("--indent", type=int, default=0, help="indent the --yaml lines by N spaces")
    sec = p.add_argument_group("security and login (as the device keys of the config)")
    sec.add_argument(
        "--security-policy",
        default="None",
        choices=("None", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"),
        help="security_policy (None)",
    )
    sec.add_argument(
        "--security-mode",
        choices=("None", "Sign", "SignAndEncrypt"),
        help="security_mode (SignAndEncrypt when a policy is given, else None)",
    )
    sec.add_argument("--cert", help="client_certificate (DER/PEM)")
    sec.add_argument("--key", help="client_private_key (PEM)")
    sec.add_argument("--server-cert", help="server_certificate: pin exactly this certificate")
    sec.add_argument("--trust-dir", help="trust_dir: directory of trusted server certificates")
    sec.add_argument("--user", help="username")
    pw = sec.add_mutually_exclusive_group()
    pw.add_argument(
        "--password-env", metavar="VAR", help="password_env: variable with the password"
    )
    pw.add_argument("--password-file", metavar="PATH", help="password_file: file with the password")
    sec.add_argument(
        "--allow-plaintext-password",
        action="store_true",
        help="allow a password with security None (it crosses the network in clear text)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="request timeout, s (5)")
    p.add_argument("-v", "--verbose", action="store_true", help="show asyncua's log messages")


# --- argument checks (unit-tested) ----------------------------------------------------------


def check_endpoint(url: str) -> str | None:
    """None if `url` looks like opc.tcp://host:port[/path], else what is wrong with it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"bad endpoint {url!r}: {exc}"
    if parts.scheme != "opc.tcp":
        return f"bad endpoint {url!r}: must start with opc.tcp://"
    if not parts.hostname:
        return f"bad endpoint {url!r}: no host"
    if port is None:
        return f"bad endpoint {url!r}: no port (OPC UA servers usually listen on 4840)"
    return None


# --- the command ---------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> OpcUaDevice:
    """The device keys `drivers.opcua` reads, from the command line, as its typed model."""
    from drivers.opcua_config import OpcUaDevice

    policy = args.security_policy
    mode = args.security_mode or ("None" if policy == "None" else "SignAndEncrypt")
    return OpcUaDevice.for_command(
        name="browse",
        endpoint=args.endpoint,
        security_policy=policy,
        security_mode=mode,
        client_certificate=args.cert,
        client_private_key=args.key,
        server_certificate=args.server_cert,
        trust_dir=args.trust_dir,
        username=args.user,
        password_env=args.password_env,
        password_file=args.password_file,
        timeout_s=args.timeout,
    )


def _argument_problem(args: argparse.Namespace, dev: OpcUaDevice) -> str | None:
    """The config's checks of the same keys, as one line (the driver checks the rest)."""
    problem = check_endpoint(args.endpoint)
    if problem:
        return problem
    if args.depth < 0 or args.max_nodes < 1:
        return "--depth must be >= 0 and --max-nodes >= 1"
    if not (args.timeout > 0):
        return "--timeout must be > 0"
    if dev.security_policy == "None" and dev.security_mode != "None":
        return f"--security-mode {dev.security_mode} needs a --security-policy"
    if dev.security_policy != "None" and dev.security_mode == "None":
        return (
            f"--security-policy {dev.security_policy} needs --security-mode Sign or SignAndEncrypt"
        )
    if (dev.password_env or dev.password_file) and not dev.username:
        return "--password-env/--password-file need --user"
    if (
        dev.security_policy == "None"
        and (dev.password_env or dev.password_file)
        and not args.allow_plaintext_password
    ):
        return (
            "security None sends the password in clear text: give --security-policy, or "
            "--allow-plaintext-password"
        )
    return None


async def _browse(
    args: argparse.Namespace, dev: OpcUaDevice, root: Any
) -> tuple[list[Found], Walker]:
    from drivers.opcua import create

    drv = create(dev, [])
    try:
        await drv.connect()
        walker = Walker(drv.client, drv.max_nodes_per_read, dev.timeout_s)
        found = await walker.walk(root, args.depth, args.max_nodes)
    finally:
        await drv.close()
    return found, walker


def run(args: argparse.Namespace) -> int:
    if not args.verbose:
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    dev = _device(args)
    problem = _argument_problem(args, dev)
    if problem:
        print(f"edgeloop browse: {problem}", file=sys.stderr)
        return 2
    from asyncua import ua

    from drivers.base import DriverError

    try:
        root = ua.NodeId.from_string(args.root)
    except Exception:  # asyncua raises UaStringParsingError, ValueError, IndexError
        print(
            f"edgeloop browse: bad --root node id {args.root!r} (e.g. i=85, ns=2;s=Plant)",
            file=sys.stderr,
        )
        return 2
    try:
        found, walker = asyncio.run(_browse(args, dev, root))
    except DriverError as exc:
        print(f"edgeloop browse: {exc}", file=sys.stderr)
        return EX_CONNECT
    except BrowseError as exc:
        print(f"edgeloop browse: {exc}", file=sys.stderr)
        return 1
    except ua.UaStatusCodeError as exc:
        print(f"edgeloop browse: {args.endpoint}: the server refused: {exc}", file=sys.stderr)
        return EX_CONNECT
    except (TimeoutError, OSError) as exc:
        print(f"edgeloop browse: {args.endpoint}: connection failed: {exc!r}", file=sys.stderr)
        return EX_CONNECT
    found = [f for f in found if matches(f, args.match)]
    tags = [f for f in found if f.type is not None]
    skipped = [f for f in found if f.type is None]
    assign_names(tags)
    note = f"browse: {walker.visited} nodes visited, {len(tags)} tags, {len(skipped)} skipped" + (
        f"; stopped at --max-nodes {args.max_nodes}" if walker.truncated else ""
    )
    if args.json:
        doc = {
            "endpoint": args.endpoint,
            "root": args.root,
            "visited": walker.visited,
            "truncated": walker.truncated,
            "tags": [json_tag(f) for f in tags],
            "skipped": [{"path": f.path, "node": f.node, "why": f.skip} for f in skipped],
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    elif args.yaml:
        print(format_yaml(tags, args.endpoint, args.indent))
        for f in skipped:
            print(f"skipped {f.path} ({f.node}): {f.skip}", file=sys.stderr)
    else:
        print(format_table(tags, skipped))
    print(note, file=sys.stderr)
    return 0 if tags else 1
