#!/usr/bin/env bash
# Make the local base image the docker tests use instead of public images (this machine has no
# image registry): a Debian bookworm root made with debootstrap from Debian's packages, with
# HAProxy from Debian's `haproxy` package, loaded with `docker import`.
#
# It stands in for `debian:bookworm-slim` (runtime stage), for the build stage's image when the
# build takes a prebuilt binary, for `haproxy:…` (Debian's haproxy is on PATH) and for the
# FoundationDB image's unused stage. The tag carries a hash of this script, so the image is
# built once per machine and rebuilt only when this file changes.
#
# Usage: tests/docker/base-image.sh        prints the image tag on stdout (logs go to stderr)
set -euo pipefail

SUITE=bookworm
MIRROR=${PALAVER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=haproxy

hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
tag="palaver-local/bookworm:$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

log() { echo "base-image: $*" >&2; }
if ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing debootstrap"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
  else
    log "debootstrap is missing and apt-get cannot install it (not root)"
    exit 1
  fi
fi

root=$(mktemp -d /tmp/palaver-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$root"; }
trap cleanup EXIT

started=$SECONDS
log "debootstrap $SUITE (minbase + $PACKAGES) into $root"
# Bounded: a mirror that stops answering must not hang CI.
timeout 900 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
# What a container does not need: package caches and lists, documentation.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
log "importing as $tag"
tar -C "$root" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap $SUITE minbase + $PACKAGES (tests/docker/base-image.sh)" \
  - "$tag" >&2
log "done in $((SECONDS - started)) s"
echo "$tag"
