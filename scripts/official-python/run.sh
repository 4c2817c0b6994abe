#!/usr/bin/env bash
# Manual check (not in CI: it installs livekit-agents from PyPI, a large
# download): an official LiveKit Python worker, pointed at lkagent-devserver,
# registers, receives a job created through the official Python server SDK,
# and its status shows up in ListDispatch.
#
#   bash scripts/official-python/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
venv="${VENV:-/tmp/lkagent-official-python}"
port="${PORT:-17890}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q livekit-agents livekit-api
cargo build -q -p lkagent-devserver --manifest-path "$root/Cargo.toml"
export LIVEKIT_URL="ws://127.0.0.1:$port" LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret
"$root/target/debug/lkagent-devserver" --port "$port" >/tmp/official-devserver.log 2>&1 &
server=$!
(cd "$here" && "$venv/bin/python" agent.py start >/tmp/official-agent.log 2>&1) &
agent=$!
trap 'kill $agent $server 2>/dev/null || true' EXIT
# the worker registers within seconds; the dispatch script waits for SUCCESS
for _ in $(seq 1 60); do
  grep -q "registered worker" /tmp/official-agent.log && break
  sleep 0.5
done
LIVEKIT_URL="http://127.0.0.1:$port" "$venv/bin/python" "$here/dispatch.py"
