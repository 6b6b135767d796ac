#!/bin/bash
# The image's HEALTHCHECK: GET /readyz on the client port; healthy only on 200. Ready means the
# store answers and the node is not draining; the body says why not, and `docker inspect`
# shows it under State.Health. bash's /dev/tcp keeps the image free of an HTTP client.
set -u
listen=${PALAVER_CLIENT__LISTEN:-0.0.0.0:7600}
port=${listen##*:}
if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
  echo "no answer on port $port"
  exit 1
fi
printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
# The node answers at once or not at all (the HEALTHCHECK's --timeout ends a hung node's check).
response=$(cat <&3)
status=$(printf '%s' "$response" | head -n 1 | cut -d ' ' -f 2)
body=${response#*$'\r\n\r\n'}
echo "/readyz $status: $body"
[ "$status" = 200 ]
