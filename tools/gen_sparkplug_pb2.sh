#!/bin/sh
# Regenerate agent/publish/sparkplug_b_pb2.py from agent/publish/sparkplug_b.proto.
# protoc comes from grpcio-tools in a throw-away venv (it is not a dependency of edgeloop);
# the generated module needs only the `protobuf` runtime pinned in pyproject.toml (at least
# the version printed below: the module checks it at import).
set -eu
cd "$(dirname "$0")/.."
venv="${TMPDIR:-/tmp}/edgeloop-protoc-venv"
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q grpcio-tools; }
out=agent/publish/sparkplug_b_pb2.py
"$venv/bin/python" -m grpc_tools.protoc -Iagent/publish --python_out=agent/publish \
    agent/publish/sparkplug_b.proto
{
    echo "# ruff: noqa"
    echo "# Generated from sparkplug_b.proto (Eclipse Sparkplug B, SPDX-License-Identifier: EPL-2.0,"
    echo "# see the notice there) by tools/gen_sparkplug_pb2.sh; do not edit."
    cat "$out"
} > "$out.tmp"
mv "$out.tmp" "$out"
.venv/bin/ruff format -q "$out"
grep -m1 'Protobuf Python Version' "$out"
