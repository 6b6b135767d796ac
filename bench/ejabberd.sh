#!/usr/bin/env bash
# Start or stop the ejabberd peer on bench/ejabberd.yml, apart from any packaged instance:
#   bench/ejabberd.sh start DIR   (writes DIR/pid; listens on 127.0.0.1:17603, path /ws)
#   bench/ejabberd.sh stop DIR
# What made it work here: Debian's ejabberdctl sources its ctl config *after* reading
# --config, so the config path goes into a ctl config of our own (EJABBERD_CONFIG_PATH); the
# node runs as the `ejabberd` user (su), so DIR must be reachable by that user; and the
# open-file limit (1,024 by default) is raised before ejabberdctl starts the VM.
set -euo pipefail
cmd="$1"
dir="$2"
bench="$(cd "$(dirname "$0")" && pwd)"
node="ejabberd-bench@localhost"
ctl() { ejabberdctl --ctl-config "$dir/ejabberdctl.cfg" --config-dir "$dir" --spool "$dir/spool" --logs "$dir/logs" --node "$node" "$@"; }
case "$cmd" in
  start)
    command -v ejabberdctl >/dev/null || { echo "ejabberd not installed (bench/setup.sh)" >&2; exit 1; }
    mkdir -p "$dir/spool" "$dir/logs"
    cp "$bench/ejabberd.yml" "$dir/ejabberd.yml"
    cat >"$dir/ejabberdctl.cfg" <<CFG
EJABBERD_CONFIG_PATH=$dir/ejabberd.yml
ERL_MAX_PORTS=65536
ERL_PROCESSES=2000000
ERLANG_NODE=$node
# su gives the ejabberd user its login limits (1,024 open files): start erl through a
# wrapper that raises the soft limit first.
ERL=$dir/erl
CFG
    # SERVER_CPUS (from bench/servers.sh): the cores the VM is pinned to, as the other servers.
    cat >"$dir/erl" <<WRAP
#!/bin/sh
ulimit -n 20000 2>/dev/null || ulimit -n "\$(ulimit -Hn)"
exec ${SERVER_CPUS:+taskset -c $SERVER_CPUS} /usr/bin/erl "\$@"
WRAP
    chmod 755 "$dir/erl"
    # Every parent directory must be traversable by the ejabberd user.
    p="$dir"; while [[ "$p" != "/" ]]; do chmod o+x "$p" 2>/dev/null || true; p="$(dirname "$p")"; done
    chown -R ejabberd:ejabberd "$dir"
    ulimit -n 20000
    ctl start
    for _ in $(seq 1 120); do
      ctl status >/dev/null 2>&1 && break
      sleep 0.5
    done
    ctl status >/dev/null 2>&1 || { echo "ejabberd did not start; see $dir/logs" >&2; tail -20 "$dir/logs/"*.log >&2 || true; exit 1; }
    pid="$(pgrep -f -- "-[s]*name $node" | head -1 || true)"
    [[ -n "$pid" ]] || pid="$(pgrep -f "beam.*$node" | head -1)"
    echo "$pid" >"$dir/pid"
    echo "ejabberd $node pid $pid, open files $(awk '/Max open files/{print $4}' /proc/"$pid"/limits)"
    ;;
  stop)
    ctl stop >/dev/null 2>&1 || true
    for _ in $(seq 1 40); do ctl status >/dev/null 2>&1 || break; sleep 0.5; done
    rm -f "$dir/pid"
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
