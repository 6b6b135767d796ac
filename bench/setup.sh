#!/usr/bin/env bash
# Install the peers the benchmark compares palaver with, and build the load generator and the
# node. Idempotent; run as root (the machines here run everything as root).
#   Debian bookworm: nats-server 2.9, ejabberd 23.01, gnuplot (the plot).
#   PyPI: python-socketio 5 + aiohttp 3 (the Node.js server cannot be installed here).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nats-server >/dev/null || need_apt+=(nats-server)
command -v ejabberdctl >/dev/null || need_apt+=(ejabberd)
command -v gnuplot >/dev/null || need_apt+=(gnuplot-nox)
if ((${#need_apt[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The Debian package starts ejabberd as a service on its default config; the benchmark runs
# its own instance on bench/ejabberd.yml, so stop the packaged one if it is running.
if command -v ejabberdctl >/dev/null && ejabberdctl status >/dev/null 2>&1; then
  ejabberdctl stop >/dev/null 2>&1 || true
fi
python3 -c 'import socketio, aiohttp' 2>/dev/null || pip install -q 'python-socketio>=5,<6' 'aiohttp>=3.9,<4'

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
cargo build --release -p node -p bench --bin palaver --bin loadgen
# The fdb-* scenarios' node: with --features fdb, in a target directory of its own (servers.sh).
if bash .ci/fdb-server.sh find >/dev/null && ldconfig -p | grep -c 'libfdb_c\.so' >/dev/null; then
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fdb" cargo build --release -p node --bin palaver --features fdb
else
  echo "FoundationDB is not installed: the fdb-* scenarios will be skipped (docs/STORAGE.md says how to get one)"
fi
echo "versions: $(nats-server --version 2>&1 | head -1); ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null);" \
  "python-socketio $(python3 -c 'import socketio; print(socketio.__version__)' 2>/dev/null || pip show python-socketio | awk '/^Version/{print $2}')"
