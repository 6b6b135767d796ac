#!/usr/bin/env bash
# Regenerate docs/BENCHMARKS.md: install the peers, build, start each server on 127.0.0.1,
# run every scenario against palaver and its peers in one go, render the report.
#
#   bench/run.sh                 the full run (10,000 idle connections, 1,000-member fan-out …)
#   QUICK=1 bench/run.sh         the same scenarios, small (a few minutes)
#   SCENARIOS="idle fanout" bench/run.sh     only some of them
#   SKIP_SETUP=1 …               do not install or build
#   REPORT=FILE …                write the report there instead of docs/BENCHMARKS.md
#
# The fdb-* scenarios measure palaver on FoundationDB beside palaver on SQLite (one binary built
# with --features fdb); they need an installed FoundationDB (.ci/fdb-server.sh finds it) and
# are skipped, saying so, without one.
#
# Results: bench/results/<scenario>.json (and .txt with the load generator's output).
# Every server is started fresh for each scenario and stopped when it ends (also on ^C).
set -euo pipefail
source "$(dirname "$0")/servers.sh"
trap stop_servers EXIT
cd "$ROOT"

QUICK="${QUICK:-0}"
SCENARIOS="${SCENARIOS:-idle fanout fanout-10k fanout-xmpp cross-node cross-node-8 saturation many-rooms reconnect-storm presence fdb-fanout fdb-many-rooms fdb-reconnect-storm}"
RESULTS="${RESULTS:-$BENCH_DIR/results}"
mkdir -p "$RESULTS"
chmod 755 "$WORK"

if [[ "${SKIP_SETUP:-0}" != 1 ]]; then
  "$BENCH_DIR/setup.sh"
fi
export NATS_VERSION="$(nats-server --version 2>/dev/null | awk '{print $2}')"
export EJABBERD_VERSION="$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '?')"
export SOCKETIO_VERSION="$(python3 -c 'import socketio; print(socketio.__version__)' 2>/dev/null || pip show python-socketio 2>/dev/null | awk '/^Version/{print $2}')"

if [[ "$QUICK" == 1 ]]; then
  IDLE_N=1000; FAN_N=200; CROSS8_N=200; CROSS8_RATE=25,50; FAN_RATES=100,0; FAN10K_N=2000; FAN10K_RATES=10,0; FAN_DUR=5; FAN_ROUNDS=1; XMPP_N=50; SAT_N=50; SAT_STEPS=5; ROOMS=20; STORM=200; BACKLOG=50
  PRES_N=1000; PRES_DUR=20
else
  IDLE_N=10000; FAN_N=1000; CROSS8_N=1000; CROSS8_RATE=25,100; FAN_RATES=200,0; FAN10K_N=10000; FAN10K_RATES=20,0; FAN_DUR=10; FAN_ROUNDS=3; XMPP_N=300; SAT_N=100; SAT_STEPS=14; ROOMS=100; STORM=1000; BACKLOG=200
  PRES_N=10000; PRES_DUR=60
fi
PRES_N="${PRESENCE_N:-$PRES_N}"; PRES_DUR="${PRESENCE_DURATION:-$PRES_DUR}"; PRES_WATCHERS="${PRESENCE_WATCHERS:-10}"

# Start the servers a scenario needs; sets TARGETS to the load generator's server options.
servers() {
  TARGETS=()
  start_palaver 17600
  TARGETS+=(--palaver "$PALAVER_URL" --palaver-pid "$PALAVER_PID" --palaver-admin "$PALAVER_ADMIN")
  local peer
  for peer in "$@"; do
    case "$peer" in
      nats) start_nats && TARGETS+=(--nats "$NATS_URL" --nats-pid "$NATS_PID") || echo "skipping NATS" ;;
      socketio) start_socketio && TARGETS+=(--socketio "$SOCKETIO_URL" --socketio-pid "$SOCKETIO_PID") || echo "skipping Socket.IO" ;;
      xmpp) start_ejabberd && TARGETS+=(--xmpp "$XMPP_URL" --xmpp-pid "$EJABBERD_PID") || echo "skipping ejabberd" ;;
    esac
  done
}

# palaver on SQLite and palaver on FoundationDB, the same binary (built with --features fdb), for
# the fdb-* scenarios; FoundationDB runs on the servers' core and its CPU counts as the server's.
fdb_servers() {
  TARGETS=()
  start_fdb || return 1
  start_palaver 17600 palaver-1 "$FDB_NODE_BIN"
  start_palaver_fdb 17620
  TARGETS+=(--palaver "$PALAVER_URL" --palaver-pid "$PALAVER_PID" --palaver-admin "$PALAVER_ADMIN")
  TARGETS+=(--palaver-fdb "$PALAVER_FDB_URL" --palaver-fdb-pid "$PALAVER_FDB_PID,$FDB_PID" --palaver-fdb-admin "$PALAVER_FDB_ADMIN")
}

run() { # name, loadgen arguments…
  local name="$1"; shift
  echo "== $name: loadgen $*"
  ( ulimit -n 20000; loadgen "$@" --json "$RESULTS/$name.json" ) 2>&1 | tee "$RESULTS/$name.txt"
}

for scenario in $SCENARIOS; do
  case "$scenario" in
    idle)
      # Accounts first, on a node that is then restarted: the measured node never hashed a
      # password (argon2's freed buffers would sit in its allocator).
      start_palaver 17600
      ( ulimit -n 20000; loadgen accounts --n "$IDLE_N" --concurrency 8 --palaver "$PALAVER_URL" --tokens "$WORK/tokens" )
      stop_pid "$PALAVER_PID"
      servers nats socketio xmpp
      run idle idle --n "$IDLE_N" --procs 2 --sources 4 --settle 5 --tokens "$WORK/tokens" "${TARGETS[@]}"
      ;;
    fanout)
      servers nats socketio
      run fanout fanout --n "$FAN_N" --rate "$FAN_RATES" --window 64 --duration "$FAN_DUR" --repeat "$FAN_ROUNDS" "${TARGETS[@]}"
      ;;
    fanout-10k)
      # Ten times the receivers (bench/servers.sh raises max_room_members for it); a tenth of
      # the fixed rate, so the deliveries per second are the same.
      servers nats
      run fanout-10k fanout --n "$FAN10K_N" --rate "$FAN10K_RATES" --window 64 --duration "$FAN_DUR" --repeat "$FAN_ROUNDS" "${TARGETS[@]}"
      ;;
    fanout-xmpp)
      servers xmpp
      run fanout-xmpp fanout --n "$XMPP_N" --rate 100,0 --window 64 --duration "$FAN_DUR" --concurrency 8 "${TARGETS[@]}"
      ;;
    cross-node)
      # palaver alone, two nodes on one shared store: the publisher on the first node, every
      # receiver on the second; the load generator places the room on either node in turn
      # (its owner decides whether deliveries or sends cross the link). Compare with the fan-out
      # table's palaver rows: the same room size and rates on one node.
      start_palaver_cluster 17610 2
      run cross-node cross-node --n "$FAN_N" --rate "$FAN_RATES" --window 64 --duration "$FAN_DUR" \
        --palaver "$PALAVER_URLS" --palaver-pid "$PALAVER_PIDS" --palaver-admin "$PALAVER_ADMINS"
      ;;
    cross-node-8)
      # Targeted delivery: eight nodes on one shared store, the room on the publisher's node and
      # its receivers on the first K of the seven others (K = 1, 3, 7; the load generator is given
      # only those nodes). The owner should send each entry to K nodes, not to all seven: the
      # load generator reads its counters around each phase (sent and spared per entry). At a
      # fixed rate the nodes keep up; at full speed the owner outruns the receivers' nodes (see
      # the cross-node table) and the eight nodes on one core delay each other's heartbeats.
      start_palaver_cluster 17610 8
      IFS=, read -r -a node_urls <<<"$PALAVER_URLS"
      IFS=, read -r -a node_admins <<<"$PALAVER_ADMINS"
      for k in 1 3 7; do
        urls_k=$(IFS=,; echo "${node_urls[*]:0:k+1}")
        admins_k=$(IFS=,; echo "${node_admins[*]:0:k+1}")
        run "cross-node-8-k$k" cross-node --owner publisher --n "$CROSS8_N" --rate "$CROSS8_RATE" --window 64 --duration "$FAN_DUR" \
          --palaver "$urls_k" --palaver-pid "$PALAVER_PIDS" --palaver-admin "$admins_k"
      done
      ;;
    saturation)
      servers nats
      run saturation saturation --n "$SAT_N" --from 10 --factor 1.6 --steps "$SAT_STEPS" --p99-ms 50 --duration 5 --full "${TARGETS[@]}"
      ;;
    many-rooms)
      servers nats socketio
      run many-rooms many-rooms --rooms "$ROOMS" --size 10 --rate 1 --duration 10 "${TARGETS[@]}"
      ;;
    reconnect-storm)
      servers
      run reconnect-storm reconnect-storm --clients "$STORM" --backlog "$BACKLOG" "${TARGETS[@]}"
      ;;
    presence)
      # palaver alone, two nodes: every user on the first, each changing state once a minute.
      # Accounts first, on the cluster then restarted, so the measured nodes never ran argon2.
      start_palaver_cluster 17610 2
      ( ulimit -n 20000; loadgen accounts --n "$((PRES_N + PRES_WATCHERS))" --concurrency 8 --sources 4 \
          --palaver "${PALAVER_URLS%%,*}" --tokens "$WORK/presence-tokens" )
      stop_palaver_cluster
      start_palaver_cluster 17610 2
      run presence presence --n "$PRES_N" --duration "$PRES_DUR" --per-minute 1 --watchers "$PRES_WATCHERS" --watch 100 \
        --sources 4 --settle 5 --tokens "$WORK/presence-tokens" --palaver "$PALAVER_URLS" --palaver-pid "$PALAVER_PIDS" \
        --palaver-admin "$PALAVER_ADMINS"
      ;;
    fdb-fanout)
      fdb_servers || { echo "skipping $scenario"; stop_servers; continue; }
      run fdb-fanout fanout --n "$FAN_N" --rate "$FAN_RATES" --window 64 --duration "$FAN_DUR" --repeat "$FAN_ROUNDS" "${TARGETS[@]}"
      ;;
    fdb-many-rooms)
      fdb_servers || { echo "skipping $scenario"; stop_servers; continue; }
      run fdb-many-rooms many-rooms --rooms "$ROOMS" --size 10 --rate 1 --duration 10 "${TARGETS[@]}"
      ;;
    fdb-reconnect-storm)
      fdb_servers || { echo "skipping $scenario"; stop_servers; continue; }
      run fdb-reconnect-storm reconnect-storm --clients "$STORM" --backlog "$BACKLOG" "${TARGETS[@]}"
      ;;
    *) echo "unknown scenario $scenario" >&2; exit 2 ;;
  esac
  stop_servers
  sleep 2
done

python3 "$BENCH_DIR/report.py" "$RESULTS" "${REPORT:-$ROOT/docs/BENCHMARKS.md}"
