#!/usr/bin/env bash
# A short run of every load-generator scenario against one palaver node (and NATS when it is
# installed), then `presence` and `cross-node` on a 2-node cluster, to prove the load
# generator works; about a minute once built. For .ci/run:
#
#   bash bench/smoke.sh
#
# Builds palaver and loadgen (release) unless SKIP_BUILD=1. Exits non-zero when a scenario
# fails or palaver loses a message. Prints "N passed, N failed" at the end.
set -euo pipefail
source "$(dirname "$0")/servers.sh"
trap stop_servers EXIT
cd "$ROOT"
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -q -p node -p bench --bin palaver --bin loadgen
fi
OUT="$WORK/smoke"
mkdir -p "$OUT"
passed=0
failed=0

check() { # name, python expression over `rows` (the palaver rows of the result)
  local name="$1" expr="$2"
  if python3 - "$OUT/$name.json" "$expr" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
rows = [r for r in doc["rows"] if r.get("kind") == "palaver"]
ok = bool(rows) and all(eval(sys.argv[2], {}, {"r": r}) for r in rows)
if not ok:
    print(json.dumps(rows, indent=1))
sys.exit(0 if ok else 1)
EOF
  then echo "ok: $name"; passed=$((passed + 1)); else echo "FAILED: $name"; failed=$((failed + 1)); fi
}

scenario() { # name, loadgen arguments…
  local name="$1"; shift
  if timeout 120 "${LOADGEN_PIN[@]}" "$LOADGEN" "$@" --json "$OUT/$name.json" >"$OUT/$name.txt" 2>"$OUT/$name.err"; then
    grep -v '^\[' "$OUT/$name.txt" || true
  else
    echo "FAILED: $name (exit $?)"; tail -n 20 "$OUT/$name.err" "$OUT/$name.txt"; failed=$((failed + 1)); return 1
  fi
}

start_palaver 17700 smoke-1
TARGETS=(--palaver "$PALAVER_URL" --palaver-pid "$PALAVER_PID" --palaver-admin "$PALAVER_ADMIN")
if command -v nats-server >/dev/null && sed 's/17601/17701/; s/17622/17722/' "$BENCH_DIR/nats.conf" >"$WORK/nats-smoke.conf"; then
  ( exec "${SERVER_PIN[@]}" nats-server -c "$WORK/nats-smoke.conf" >"$WORK/nats.log" 2>&1 ) &
  STARTED_PIDS+=($!)
  wait_port 127.0.0.1 17701 30 && TARGETS+=(--nats ws://127.0.0.1:17701 --nats-pid "${STARTED_PIDS[-1]}")
fi

# Accounts on a node that is then restarted, as bench/run.sh does (argon2's freed buffers would
# otherwise hide the connections' memory).
loadgen accounts --n 200 --concurrency 8 --palaver "$PALAVER_URL" --tokens "$OUT/tokens" >/dev/null
stop_pid "$PALAVER_PID"
start_palaver 17700 smoke-1
TARGETS[3]="$PALAVER_PID"
scenario idle idle --n 200 --procs 2 --sources 2 --settle 1 --tokens "$OUT/tokens" "${TARGETS[@]}" \
  && check idle 'r["connections"] == 200 and r["failed"] == 0 and r["kib_per_connection"] > 0'
scenario fanout fanout --n 50 --rate 200,0 --duration 1.5 --warmup 0.5 "${TARGETS[@]}" \
  && check fanout '(r["delivered_pct"] >= 99.9 and r["receivers_closed"] == 0 and r["out_of_order"] == 0
    and r["latency_receivers"] == 1 and r["latency"]["count"] > 0 and r["server_cpu_us_per_delivery"] > 0
    and r["server_cpu_us_per_message"] > r["server_cpu_us_per_delivery"] and r["loadgen_cpu_pct"] > 0
    and isinstance(r["loadgen_saturated"], bool))'
scenario many-rooms many-rooms --rooms 5 --size 6 --rate 4 --duration 1.5 --warmup 0.5 "${TARGETS[@]}" \
  && check many-rooms 'r["delivered_pct"] >= 99.0 and r["failed"] == 0'
scenario reconnect-storm reconnect-storm --clients 30 --backlog 20 "${TARGETS[@]}" \
  && check reconnect-storm 'r["replayed"] == r["expected"] and r["failed"] == 0'
scenario saturation saturation --n 20 --from 50 --factor 2 --steps 2 --duration 1 --warmup 0.5 --p99-ms 1000 "${TARGETS[@]}" \
  && check saturation 'True'

# Presence on a 2-node cluster: every user on the first node, changing state 20 times a minute.
stop_servers
start_palaver_cluster 17710 2 smoke-cluster
scenario presence presence --n 200 --duration 3 --per-minute 20 --watchers 2 --watch 20 --settle 1 \
  --palaver "$PALAVER_URLS" --palaver-pid "$PALAVER_PIDS" --palaver-admin "$PALAVER_ADMINS" \
  && check presence '(r["users"] == 200 and r["failed"] == 0 and r["changes"] > 0 and r["changes_ok"] == r["changes"]
    and r["presence_users_b"] >= 200 and 0 < r["batches_per_s"] < r["naive_messages_per_s"]
    and r["records"] >= 0.9 * r["changes"] and r["marked_pushes"] == r["expected_pushes"] > 0)'

# Cross-node on the same cluster: the room on each node in turn, at a rate both keep up with.
scenario cross-node cross-node --n 30 --rate 100 --duration 1.5 --warmup 0.5 \
  --palaver "$PALAVER_URLS" --palaver-pid "$PALAVER_PIDS" --palaver-admin "$PALAVER_ADMINS" \
  && check cross-node '(r["delivered_pct"] >= 99.9 and r["receivers_closed"] == 0 and r["out_of_order"] == 0
    and ("publisher" in r["target"] or "receivers" in r["target"]))'

echo "loadgen smoke: $passed passed, $failed failed"
[[ "$failed" == 0 ]]
