#!/usr/bin/env bash
# Make a FoundationDB server image from the FoundationDB installed on this machine, for the
# docker tests on FoundationDB: this machine has no image registry, so the official
# `foundationdb/foundationdb` image cannot be pulled. It never builds FoundationDB; where none
# is installed it says so and exits 3 (the prefix is found as .ci/fdb-server.sh finds it:
# FDB_PREFIX, /opt/foundationdb, or the official packages under /usr).
#
# The image answers to what docker/compose.yaml asks of the official one:
# - `fdbserver`, `fdbcli` on PATH and `/usr/lib/libfdb_c.so` (the node image takes the client
#   library from there, so client and server match);
# - the official entrypoint's settings: FDB_NETWORKING_MODE (`container`: the server announces
#   the container's address; `host`: 127.0.0.1), FDB_COORDINATOR (a host name; the cluster file
#   names its address), FDB_COORDINATOR_PORT, FDB_PORT (4500), FDB_CLUSTER_FILE
#   (/var/fdb/fdb.cluster), FDB_PROCESS_CLASS (unset), data in /var/fdb/data, logs in
#   /var/fdb/logs;
# - `getent`, `awk`, `grep` and `seq` for the compose file's fdb-init.
# The shared libraries the programs need beyond the base image's come along from this machine
# (the base image is the same Debian release).
#
# Usage: tests/docker/fdb-image.sh BASE_IMAGE    prints the image tag on stdout (logs to stderr)
set -euo pipefail

base=${1:?usage: fdb-image.sh BASE_IMAGE}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "fdb-image: $*" >&2; }

prefix=$(bash "$here/../../.ci/fdb-server.sh" find) || {
  log "FoundationDB is not installed (set FDB_PREFIX to a prefix with bin/fdbserver)"
  exit 3
}
tool() {
  for path in "$prefix/bin/$1" "$prefix/sbin/$1" "$prefix/lib/foundationdb/$1"; do
    [ -x "$path" ] && { echo "$path"; return 0; }
  done
  log "no $1 under $prefix"
  return 1
}
fdbserver=$(tool fdbserver)
fdbcli=$(tool fdbcli)
libfdb=
for path in "$prefix/lib/libfdb_c.so" /usr/lib/libfdb_c.so /usr/lib64/libfdb_c.so; do
  [ -f "$path" ] && { libfdb=$path; break; }
done
[ -n "$libfdb" ] || { log "no libfdb_c.so under $prefix/lib or /usr/lib"; exit 3; }

# The tag: the base image, this script and the programs, so a rebuilt FoundationDB or a changed
# script makes a new image and an unchanged one is reused.
hash=$( { docker image inspect --format '{{.Id}}' "$base"; cat "${BASH_SOURCE[0]}"; sha256sum "$fdbserver" "$fdbcli" "$libfdb"; } \
  | sha256sum | cut -c1-12)
# `FoundationDB 7.3 (v7.3.69)` → 7.3.69
version=$("$fdbserver" --version 2>/dev/null | sed -n 's/.*(v\([0-9.]*\)).*/\1/p' | head -1)
tag="palaver-local/foundationdb:${version:-unknown}-$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

context=$(mktemp -d /tmp/palaver-fdb-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/lib"
cp "$fdbserver" "$fdbcli" "$context/bin/"
cp "$libfdb" "$context/libfdb_c.so"
# Every library the three need, except those of the C and C++ runtimes, which the base image
# has in the same version (the same Debian release; replacing the C library inside a running
# image would break it).
for file in "$fdbserver" "$fdbcli" "$libfdb"; do
  ldd "$file" | awk '/=> \// { print $3 }'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so.* | ld-linux*.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libstdc++.so.* | libgcc_s.so.*) ;;
    *) cp -L "$lib" "$context/lib/" ;;
  esac
done

cat >"$context/fdb.bash" <<'EOF'
#!/bin/bash
# The official FoundationDB image's entrypoint contract, for the settings palaver's compose file
# uses: write the cluster file if there is none, then run one fdbserver in the foreground.
set -euo pipefail
port=${FDB_PORT:-4500}
file=${FDB_CLUSTER_FILE:-/var/fdb/fdb.cluster}
case "${FDB_NETWORKING_MODE:-container}" in
  host) public_ip=127.0.0.1 ;;
  container) public_ip=$(getent ahostsv4 "$(cat /etc/hostname)" | awk 'NR == 1 { print $1 }') ;;
  *) echo "fdb.bash: FDB_NETWORKING_MODE must be container or host" >&2; exit 1 ;;
esac
if [ ! -s "$file" ]; then
  if [ -n "${FDB_COORDINATOR:-}" ]; then
    coordinator_ip=
    for _ in $(seq 1 60); do
      coordinator_ip=$(getent ahostsv4 "$FDB_COORDINATOR" | awk 'END { print $1 }')
      [ -n "$coordinator_ip" ] && break
      sleep 1
    done
    [ -n "$coordinator_ip" ] || { echo "fdb.bash: cannot resolve $FDB_COORDINATOR" >&2; exit 1; }
    echo "docker:docker@$coordinator_ip:${FDB_COORDINATOR_PORT:-4500}" >"$file"
  else
    echo "docker:docker@$public_ip:$port" >"$file"
  fi
fi
mkdir -p /var/fdb/data /var/fdb/logs
class=()
[ -n "${FDB_PROCESS_CLASS:-}" ] && class=(--class "$FDB_PROCESS_CLASS")
exec fdbserver --listen-address "0.0.0.0:$port" --public-address "$public_ip:$port" \
  --cluster-file "$file" --datadir /var/fdb/data --logdir /var/fdb/logs \
  --locality-zoneid "$(cat /etc/hostname)" --locality-machineid "$(cat /etc/hostname)" "${class[@]}"
EOF

cat >"$context/Dockerfile" <<EOF
FROM $base
COPY bin/ /usr/bin/
COPY libfdb_c.so /usr/lib/libfdb_c.so
COPY lib/ /usr/local/lib/palaver-fdb/
COPY fdb.bash /var/fdb/scripts/fdb.bash
RUN echo /usr/local/lib/palaver-fdb > /etc/ld.so.conf.d/palaver-fdb.conf && ldconfig && \\
    chmod 0755 /var/fdb/scripts/fdb.bash && mkdir -p /var/fdb/data /var/fdb/logs && \\
    fdbserver --version >/dev/null && fdbcli --version >/dev/null
ENV FDB_CLUSTER_FILE=/var/fdb/fdb.cluster
EXPOSE 4500
VOLUME /var/fdb/data
ENTRYPOINT ["/var/fdb/scripts/fdb.bash"]
EOF

log "building $tag from $prefix"
docker build -q -t "$tag" "$context" >&2
echo "$tag"
