#!/usr/bin/env bash
# Starts and stops a throwaway single-process FoundationDB server for the tests, from an
# installed FoundationDB (the official packages, or one installed under a prefix). It never
# installs or builds FoundationDB: where none is found it says so and exits 3.
#
#   .ci/fdb-server.sh start DIR   start fdbserver on 127.0.0.1 with DIR/fdb.cluster, configure
#                                 `single ssd`, wait until the database is available
#   .ci/fdb-server.sh stop DIR    stop it (SIGTERM, then SIGKILL)
#   .ci/fdb-server.sh restart DIR start the server of DIR again, on its port and data (after a
#                                 kill), and wait until the database is available
#   .ci/fdb-server.sh find        print the prefix holding bin/fdbserver, or exit 3
#
# FDB_PREFIX names the prefix (default: /opt/foundationdb, then /usr with /usr/sbin/fdbserver).
set -euo pipefail

find_prefix() {
  for prefix in "${FDB_PREFIX:-}" /opt/foundationdb /usr/local /usr; do
    [ -n "$prefix" ] || continue
    for bin in "$prefix/bin/fdbserver" "$prefix/sbin/fdbserver" "$prefix/lib/foundationdb/fdbserver"; do
      if [ -x "$bin" ]; then
        echo "$prefix"
        return 0
      fi
    done
  done
  return 3
}

tool() { # tool PREFIX NAME: the path of an installed FoundationDB program
  for path in "$1/bin/$2" "$1/sbin/$2" "$1/lib/foundationdb/$2"; do
    [ -x "$path" ] && { echo "$path"; return 0; }
  done
  return 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  find)
    find_prefix
    ;;
  start)
    dir="${2:?usage: fdb-server.sh start DIR}"
    prefix="$(find_prefix)" || { echo "FoundationDB is not installed (set FDB_PREFIX)"; exit 3; }
    fdbserver="$(tool "$prefix" fdbserver)"
    fdbcli="$(tool "$prefix" fdbcli)"
    mkdir -p "$dir/data" "$dir/logs"
    port="$(free_port)"
    echo "palaver_test:$(date +%s%N)@127.0.0.1:$port" >"$dir/fdb.cluster"
    nohup "$fdbserver" -p "127.0.0.1:$port" -C "$dir/fdb.cluster" -d "$dir/data" -L "$dir/logs" \
      >"$dir/fdbserver.out" 2>&1 &
    echo $! >"$dir/fdbserver.pid"
    # A new cluster must be configured once; `configure new` fails harmlessly if it already is.
    for _ in $(seq 1 60); do
      if timeout 10 "$fdbcli" -C "$dir/fdb.cluster" --exec "configure new single ssd" --timeout 5 >/dev/null 2>&1; then
        break
      fi
      sleep 1
    done
    for _ in $(seq 1 120); do
      if timeout 10 "$fdbcli" -C "$dir/fdb.cluster" --exec "status minimal" --timeout 5 2>/dev/null |
        grep -q "available"; then
        echo "FoundationDB $("$fdbserver" --version 2>/dev/null | head -1) on 127.0.0.1:$port ($dir/fdb.cluster)"
        exit 0
      fi
      sleep 1
    done
    echo "FoundationDB did not become available; its output:"
    cat "$dir/fdbserver.out" || true
    exit 1
    ;;
  restart)
    dir="${2:?usage: fdb-server.sh restart DIR}"
    prefix="$(find_prefix)" || { echo "FoundationDB is not installed (set FDB_PREFIX)"; exit 3; }
    fdbserver="$(tool "$prefix" fdbserver)"
    fdbcli="$(tool "$prefix" fdbcli)"
    port="$(sed 's/.*://' "$dir/fdb.cluster")"
    nohup "$fdbserver" -p "127.0.0.1:$port" -C "$dir/fdb.cluster" -d "$dir/data" -L "$dir/logs" \
      >>"$dir/fdbserver.out" 2>&1 &
    echo $! >"$dir/fdbserver.pid"
    for _ in $(seq 1 120); do
      if timeout 10 "$fdbcli" -C "$dir/fdb.cluster" --exec "status minimal" --timeout 5 2>/dev/null |
        grep -q "available"; then
        exit 0
      fi
      sleep 1
    done
    echo "FoundationDB did not become available again; its output:"
    tail -20 "$dir/fdbserver.out" || true
    exit 1
    ;;
  stop)
    dir="${2:?usage: fdb-server.sh stop DIR}"
    if [ -f "$dir/fdbserver.pid" ]; then
      pid="$(cat "$dir/fdbserver.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    ;;
  *)
    echo "usage: $0 start DIR | stop DIR | find" >&2
    exit 2
    ;;
esac
