#!/bin/sh
# palaver's container entrypoint: fills in the settings that depend on the container, then runs
# the node (as PID 1, so `docker stop` sends SIGTERM straight to it and it drains).
#
# - node.name defaults to the container's hostname: replicas made by `docker compose --scale`
#   share one environment, and names must be unique in a cluster (a compose service that sets
#   `hostname:` gets that name).
# - cluster.advertise defaults to <hostname>:<cluster port> when the cluster is on: other nodes
#   dial that name, and Docker's DNS resolves a container's hostname (its service name or its
#   short id) to its current address, which may change when it is restarted or reconnected.
# - With the FoundationDB store and a cluster file that does not exist yet (the compose file's
#   fdb-init writes it), wait for it for PALAVER_FDB_WAIT_SECS (default 120), saying so.
set -eu

: "${HOSTNAME:=$(cat /etc/hostname)}"
if [ -z "${PALAVER_NODE__NAME:-}" ]; then
  PALAVER_NODE__NAME=$HOSTNAME
  export PALAVER_NODE__NAME
fi

case "${PALAVER_CLUSTER__ENABLED:-false}" in
  true | 1)
    if [ -z "${PALAVER_CLUSTER__ADVERTISE:-}" ]; then
      listen=${PALAVER_CLUSTER__LISTEN:-0.0.0.0:7700}
      PALAVER_CLUSTER__ADVERTISE="$HOSTNAME:${listen##*:}"
      export PALAVER_CLUSTER__ADVERTISE
    fi
    ;;
esac

if [ "${PALAVER_STORE__BACKEND:-}" = fdb ] && [ -n "${PALAVER_STORE__FDB_CLUSTER_FILE:-}" ]; then
  wait_secs=${PALAVER_FDB_WAIT_SECS:-120}
  waited=0
  while [ ! -s "$PALAVER_STORE__FDB_CLUSTER_FILE" ] && [ "$waited" -lt "$wait_secs" ]; do
    if [ $((waited % 10)) -eq 0 ]; then
      echo "palaver-entrypoint: waiting for the FoundationDB cluster file $PALAVER_STORE__FDB_CLUSTER_FILE (${waited}s of ${wait_secs}s)" >&2
    fi
    sleep 1
    waited=$((waited + 1))
  done
fi

exec /usr/local/bin/palaver "$@"
