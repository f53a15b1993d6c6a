#!/bin/sh
# Smoke-check a pushed python stack image without a Berth unit: copy it with skopeo,
# unpack it with umoci, and run its entrypoint in a chroot twice: with an empty
# /home/site/wwwroot (placeholder page from http.server) and with an app.py.
#
#   stacks/python/check.sh REGISTRY/NAME:TAG     e.g. 127.0.0.1:5000/stacks/python:3
#
# Needs root, skopeo, umoci, curl. Uses ports 18098 and 18099 on 127.0.0.1.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 REGISTRY/NAME:TAG" >&2; exit 2; }
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/berth-stack-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
skopeo copy --quiet --src-tls-verify=false "docker://$1" "oci:$WORK/oci:x"
umoci unpack --image "$WORK/oci:x" "$WORK/b" >/dev/null
ROOT=$WORK/b/rootfs

serve() { # PORT: run the entrypoint for 6 s in the background
    PORT=$1 timeout 6 chroot "$ROOT" /opt/berth/start >>"$WORK/log" 2>&1 &
    i=0
    until curl -fs "http://127.0.0.1:$1/" >"$WORK/out" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 50 ] || { cat "$WORK/log" >&2; echo "$0: no answer on $1" >&2; exit 1; }
        sleep 0.1
    done
}

serve 18099
grep -q "berth python stack" "$WORK/out" || { echo "$0: placeholder page missing" >&2; exit 1; }
echo "ok: empty wwwroot serves the placeholder page"
cat >"$ROOT/home/site/wwwroot/app.py" <<'PY'
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"app.py ok\n")
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
PY
serve 18098
grep -q "app.py ok" "$WORK/out" || { echo "$0: app.py not run" >&2; exit 1; }
echo "ok: app.py runs on \$PORT"
wait
