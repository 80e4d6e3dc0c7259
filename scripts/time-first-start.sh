#!/usr/bin/env bash
# How long a newcomer waits: clone REPO into DEST, run `make run` there, and print the
# seconds until /readyz answers 200 on port 8080; then stop it (SIGTERM to its process group).
#   scripts/time-first-start.sh . /tmp/fh            # warm pip cache
#   PIP_NO_CACHE_DIR=1 scripts/time-first-start.sh . /tmp/fh
set -euo pipefail
REPO=${1:?usage: time-first-start.sh REPO DEST}
DEST=${2:?usage: time-first-start.sh REPO DEST}
rm -rf "$DEST"
git clone -q "$REPO" "$DEST"
cd "$DEST"
if curl -s -o /dev/null http://127.0.0.1:8080/readyz; then
  echo "something already answers on 127.0.0.1:8080: stop it first" >&2
  exit 1
fi
start=$(date +%s.%N)
setsid make run >"$DEST.log" 2>&1 &
pid=$!
trap 'kill -TERM -- -$pid 2>/dev/null || true' EXIT
until curl -fs -o /dev/null http://127.0.0.1:8080/readyz; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "make run exited before it was ready (log: $DEST.log)" >&2
    exit 1
  fi
  sleep 0.5
done
python3 -c "import sys; print(f'make run ready (/readyz 200) after {float(sys.argv[2]) - float(sys.argv[1]):.1f} s')" \
  "$start" "$(date +%s.%N)"
