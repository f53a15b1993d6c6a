#!/usr/bin/env bash
# Starts Debian's docker-registry (distribution 2.8) on 127.0.0.1:PORT with its data in DIR,
# unless something already answers there. Usage: registry.sh PORT DIR
set -euo pipefail
port=${1:?usage: registry.sh PORT DIR}
dir=${2:?usage: registry.sh PORT DIR}
if curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$dir/data"
cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
echo $! > "$dir/registry.pid"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "docker-registry did not start on 127.0.0.1:$port; see $dir/registry.log" >&2
exit 1
