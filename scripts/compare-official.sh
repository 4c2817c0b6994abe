#!/bin/sh
# lkagent beside the official Python worker (livekit-agents), through the
# same dev server in the same run: availability answer, job start, memory
# idle and with JOBS concurrent jobs. Not run in CI: it installs
# livekit-agents from the Python package index into a virtualenv.
#
#   scripts/compare-official.sh            # JOBS=50 REQUESTS=300
#   JOBS=100 REQUESTS=1000 scripts/compare-official.sh
#
# Prints both rows and their ratios; writes target/compare-official.json.
set -eu
cd "$(dirname "$0")/.."

JOBS=${JOBS:-50}
REQUESTS=${REQUESTS:-300}
VENV=${VENV:-target/official-venv}
AGENTS_VERSION=${AGENTS_VERSION:-1.8.9}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet "livekit-agents==$AGENTS_VERSION"
cargo build --release --example bench

# the official CLI's `start` mode is its production mode; its log goes to
# target/official-worker.log
exec target/release/examples/bench \
    --only echo,availability,concurrency \
    --jobs "$JOBS" --requests "$REQUESTS" \
    --compare-command "exec $VENV/bin/python scripts/official_agent.py start >target/official-worker.log 2>&1" \
    --json target/compare-official.json
