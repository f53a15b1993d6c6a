#!/usr/bin/env bash
# README command 1: brings up a whole Berth on this machine with embedded defaults and
# serves the demo site. Safe to run again: it reuses what is already up.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
[ "$(id -u)" = 0 ] || { echo "run as root (sudo): Berth creates namespaces, cgroups and FUSE mounts" >&2; exit 1; }
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> building Berth"
cargo build --workspace --bins --quiet
BIN=$PWD/target/debug
STATE=${BERTH_STATE_DIR:-/var/lib/berth}
DEMO=${BERTH_DEMO_DIR:-/var/lib/berth-demo}
mkdir -p "$STATE" "$DEMO"

echo "==> local OCI registry on 127.0.0.1:5000"
./scripts/registry.sh 5000 "$DEMO/registry"

echo "==> building the demo image (busybox httpd) and pushing 127.0.0.1:5000/hello:1"
./scripts/build-image.sh hello:1 127.0.0.1:5000 >"$DEMO/build-image.log" 2>&1 || { cat "$DEMO/build-image.log"; exit 1; }

if ! curl -fsS http://127.0.0.1:7700/healthz >/dev/null 2>&1; then
  echo "==> berth up (log: $STATE/up.log)"
  nohup "$BIN/berth" up --state-dir "$STATE" >"$STATE/up.log" 2>&1 &
  echo $! > "$STATE/up.pid"
  for _ in $(seq 1 300); do
    grep -q "Press Ctrl-C" "$STATE/up.log" 2>/dev/null && break
    if ! kill -0 "$(cat "$STATE/up.pid")" 2>/dev/null; then cat "$STATE/up.log"; exit 1; fi
    sleep 0.2
  done
  cat "$STATE/up.log"
fi
export BERTH_TOKEN_FILE=$STATE/controller/token

if "$BIN/berth" sites show hello >/dev/null 2>&1; then
  echo "==> site hello exists already"
else
  echo "==> berth sites create hello --image 127.0.0.1:5000/hello:1"
  "$BIN/berth" sites create hello --image 127.0.0.1:5000/hello:1
fi
"$BIN/berth" sites list
echo "==> curl http://hello.localhost:8080/"
curl -sS --max-time 10 http://hello.localhost:8080/
curl -sS --max-time 10 http://hello.localhost:8080/
echo
echo "Berth is serving http://hello.localhost:8080/ (set up in $(( $(date +%s) - t0 ))s)."
echo "CLI:  export BERTH_TOKEN_FILE=$STATE/controller/token; $BIN/berth sites list"
echo "Stop: kill \$(cat $STATE/up.pid)"
