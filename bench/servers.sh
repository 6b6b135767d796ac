# Sourced by bench/run.sh and bench/smoke.sh: start and stop the servers under test.
# Each start_* sets <NAME>_PID and <NAME>_URL (palaver also PALAVER_ADMIN, its admin port, at
# client port + 1000); everything listens on 127.0.0.1 only, and
# stop_servers (run on exit) ends exactly the processes started here.
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target}"
NODE_BIN="${NODE_BIN:-$CARGO_TARGET_DIR/release/palaver}"  # not PALAVER_…: the node reads those as configuration
LOADGEN="${LOADGEN:-$CARGO_TARGET_DIR/release/loadgen}"
# The node built with --features fdb (bench/setup.sh builds it where FoundationDB is installed),
# in a target directory of its own so that it does not replace the default build.
FDB_NODE_BIN="${FDB_NODE_BIN:-$CARGO_TARGET_DIR/fdb/release/palaver}"
WORK="${BENCH_WORK:-$(mktemp -d /tmp/palaver-bench.XXXXXX)}"
# Servers on one core, the load generator on another, where there are two or more: a load
# generator sharing the server's cores takes CPU from it, and its own limit would pass for
# the server's. PIN=0 turns this off; SERVER_CPUS / LOADGEN_CPUS choose other cores.
if [[ "${PIN:-1}" == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
  SERVER_PIN=(taskset -c "${SERVER_CPUS:-0}")
  LOADGEN_PIN=(taskset -c "${LOADGEN_CPUS:-1}")
else
  SERVER_PIN=()
  LOADGEN_PIN=()
fi
# The load generator as the scripts run it: pinned.
loadgen() { "${LOADGEN_PIN[@]}" "$LOADGEN" "$@"; }
mkdir -p "$WORK"
STARTED_PIDS=()

wait_port() { # host port seconds
  local deadline=$((SECONDS + ${3:-30}))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "nothing listens on $1:$2 after ${3:-30} s" >&2; return 1; }
    sleep 0.2
  done
}

# What every benchmark node gets besides its name and ports: cheap password hashing (accounts
# are set-up here, not what is measured) and limits out of the load's way.
BENCH_NODE_ENV=(
  PALAVER_AUTH__TOKEN_KEY="bench-token-key-0123456789abcdef-0123456789"
  PALAVER_AUTH__ARGON2_MEMORY_KIB=1024
  PALAVER_AUTH__ARGON2_ITERATIONS=1
  PALAVER_AUTH__REGISTER_MAX_PER_ADDRESS=0
  PALAVER_AUTH__LOGIN_MAX_FAILURES=10000
  PALAVER_LIMITS__MAX_ROOM_MEMBERS=20000
  PALAVER_LIMITS__FRAMES_PER_SECOND=1000000
  PALAVER_LIMITS__MAX_CONNECTIONS=19500
  # The load comes from 127.0.0.x: a few addresses hold every connection.
  PALAVER_LIMITS__MAX_CONNECTIONS_PER_ADDRESS=19500
  PALAVER_LOG__FILTER="${NODE_LOG_FILTER:-warn}"
)

start_palaver() { # [port] [name] [binary] [extra NAME=VALUE settings…]
  local port="${1:-17600}" name="${2:-palaver-1}" bin="${3:-$NODE_BIN}"
  local extra=("${@:4}")
  mkdir -p "$WORK/$name"
  (
    ulimit -n 20000
    cd "$WORK/$name"
    PALAVER_NODE__NAME="$name" \
    PALAVER_NODE__DATA_DIR="$WORK/$name" \
    PALAVER_CLIENT__LISTEN="127.0.0.1:$port" \
    PALAVER_ADMIN__LISTEN="127.0.0.1:$((port + 1000))" \
    exec "${SERVER_PIN[@]}" env -u PALAVER_BIN "${BENCH_NODE_ENV[@]}" "${extra[@]}" "$bin" >"$WORK/$name.out" 2>"$WORK/$name.log"
  ) &
  PALAVER_PID=$!
  STARTED_PIDS+=("$PALAVER_PID")
  wait_port 127.0.0.1 "$port" 60
  PALAVER_URL="ws://127.0.0.1:$port/ws"
  PALAVER_ADMIN="127.0.0.1:$((port + 1000))"
}

# A cluster of `count` palaver nodes on one shared SQLite store (as the cluster harness of
# tests/src/cluster.rs runs them): client ports port, port+1, …; cluster ports port+50, …;
# admin ports port+1000, ….
# Sets PALAVER_URLS, PALAVER_ADMINS and PALAVER_PIDS (comma-separated, node order) and
# PALAVER_CLUSTER_PIDS.
start_palaver_cluster() { # [port] [count] [name]
  local port="${1:-17610}" count="${2:-2}" name="${3:-cluster}" k seeds=""
  local dir="$WORK/$name"
  mkdir -p "$dir"
  PALAVER_URLS=""; PALAVER_ADMINS=""; PALAVER_PIDS=""; PALAVER_CLUSTER_PIDS=()
  for ((k = 0; k < count; k++)); do
    local cport=$((port + 50 + k)) pid
    (
      ulimit -n 20000
      cd "$dir"
      PALAVER_NODE__NAME="$name-$((k + 1))" \
      PALAVER_NODE__DATA_DIR="$dir" \
      PALAVER_CLIENT__LISTEN="127.0.0.1:$((port + k))" \
      PALAVER_ADMIN__LISTEN="127.0.0.1:$((port + 1000 + k))" \
      PALAVER_CLUSTER__ENABLED=true \
      PALAVER_CLUSTER__LISTEN="127.0.0.1:$cport" \
      PALAVER_CLUSTER__COOKIE="bench-cluster-cookie-0123456789" \
      exec "${SERVER_PIN[@]}" env -u PALAVER_BIN "${BENCH_NODE_ENV[@]}" ${seeds:+"PALAVER_CLUSTER__SEEDS=[$seeds]"} "$NODE_BIN" >"$WORK/$name-$((k + 1)).out" 2>"$WORK/$name-$((k + 1)).log"
    ) &
    pid=$!
    STARTED_PIDS+=("$pid")
    PALAVER_CLUSTER_PIDS+=("$pid")
    wait_port 127.0.0.1 "$((port + k))" 60
    seeds="${seeds:+$seeds,}\"127.0.0.1:$cport\""
    PALAVER_URLS="${PALAVER_URLS:+$PALAVER_URLS,}ws://127.0.0.1:$((port + k))/ws"
    PALAVER_ADMINS="${PALAVER_ADMINS:+$PALAVER_ADMINS,}127.0.0.1:$((port + 1000 + k))"
    PALAVER_PIDS="${PALAVER_PIDS:+$PALAVER_PIDS,}$pid"
  done
  # Until every node sees all of them live and serving (asked on its admin port).
  local deadline=$((SECONDS + 60)) ready
  while :; do
    ready=1
    for ((k = 0; k < count; k++)); do
      python3 - "$((port + 1000 + k))" "$count" 2>/dev/null <<'EOF2' || ready=0
import json, sys, urllib.request
status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/cluster", timeout=5))
cluster = status.get("cluster", {})
sys.exit(0 if len(cluster.get("live", [])) == int(sys.argv[2]) and cluster.get("serving") else 1)
EOF2
    done
    ((ready)) && break
    ((SECONDS < deadline)) || { echo "the $count-node cluster did not converge in 60 s" >&2; return 1; }
    sleep 0.5
  done
}

stop_palaver_cluster() {
  local pid
  for pid in "${PALAVER_CLUSTER_PIDS[@]}"; do stop_pid "$pid"; done
  PALAVER_CLUSTER_PIDS=()
}

# A single-process FoundationDB (`single ssd`, its data under $WORK) on the servers' core
# (FDB_CPUS chooses another, as if the database ran on a machine of its own), from an installed
# FoundationDB (.ci/fdb-server.sh finds it). Sets FDB_PID and FDB_CLUSTER.
start_fdb() {
  bash "$ROOT/.ci/fdb-server.sh" find >/dev/null || { echo "FoundationDB is not installed (.ci/fdb-server.sh find)"; return 1; }
  [[ -x "$FDB_NODE_BIN" ]] || { echo "no node built with --features fdb at $FDB_NODE_BIN (bench/setup.sh)"; return 1; }
  bash "$ROOT/.ci/fdb-server.sh" start "$WORK/fdb" || return 1
  FDB_PID="$(cat "$WORK/fdb/fdbserver.pid")"
  FDB_CLUSTER="$WORK/fdb/fdb.cluster"
  ((${#SERVER_PIN[@]})) && taskset -a -p -c "${FDB_CPUS:-${SERVER_CPUS:-0}}" "$FDB_PID" >/dev/null
  FDB_STARTED=1
}

# palaver on the FoundationDB of start_fdb; sets PALAVER_FDB_PID, _URL and _ADMIN.
start_palaver_fdb() { # [port] [name]
  local port="${1:-17620}" saved=("${PALAVER_PID:-}" "${PALAVER_URL:-}" "${PALAVER_ADMIN:-}")
  start_palaver "$port" "${2:-palaver-fdb}" "$FDB_NODE_BIN" \
    PALAVER_STORE__BACKEND=fdb PALAVER_STORE__FDB_CLUSTER_FILE="$FDB_CLUSTER"
  PALAVER_FDB_PID="$PALAVER_PID" PALAVER_FDB_URL="$PALAVER_URL" PALAVER_FDB_ADMIN="$PALAVER_ADMIN"
  PALAVER_PID="${saved[0]}" PALAVER_URL="${saved[1]}" PALAVER_ADMIN="${saved[2]}"
}

start_nats() {
  command -v nats-server >/dev/null || { echo "nats-server not installed (bench/setup.sh)"; return 1; }
  ( ulimit -n 20000; exec "${SERVER_PIN[@]}" nats-server -c "$BENCH_DIR/nats.conf" >"$WORK/nats.log" 2>&1 ) &
  NATS_PID=$!
  STARTED_PIDS+=("$NATS_PID")
  wait_port 127.0.0.1 17601 30
  NATS_URL="ws://127.0.0.1:17601"
}

start_socketio() {
  python3 -c 'import socketio, aiohttp' 2>/dev/null || { echo "python-socketio not installed (bench/setup.sh)"; return 1; }
  ( ulimit -n 20000; exec "${SERVER_PIN[@]}" python3 "$BENCH_DIR/socketio_server.py" --port 17602 >"$WORK/socketio.log" 2>&1 ) &
  SOCKETIO_PID=$!
  STARTED_PIDS+=("$SOCKETIO_PID")
  wait_port 127.0.0.1 17602 30
  SOCKETIO_URL="ws://127.0.0.1:17602/socket.io/?EIO=4&transport=websocket"
}

start_ejabberd() {
  SERVER_CPUS="${SERVER_PIN[2]:-}" "$BENCH_DIR/ejabberd.sh" start "$WORK/ejabberd" || return 1
  EJABBERD_PID="$(cat "$WORK/ejabberd/pid")"
  XMPP_URL="ws://127.0.0.1:17603/ws"
}

stop_pid() { # end one process started here
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local kept=() pid
  for pid in "${STARTED_PIDS[@]}"; do [[ "$pid" == "$1" ]] || kept+=("$pid"); done
  STARTED_PIDS=("${kept[@]}")
}

stop_servers() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  [[ -f "$WORK/ejabberd/pid" ]] && "$BENCH_DIR/ejabberd.sh" stop "$WORK/ejabberd" || true
  if [[ "${FDB_STARTED:-0}" == 1 ]]; then
    bash "$ROOT/.ci/fdb-server.sh" stop "$WORK/fdb" >/dev/null 2>&1 || true
    rm -rf "$WORK/fdb"
    FDB_STARTED=0
  fi
  for pid in "${STARTED_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}
