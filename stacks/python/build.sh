#!/bin/sh
# Build Berth's `python` stack image (Debian 12 python3) and push it to a registry.
#
#   stacks/python/build.sh NAME:TAG REGISTRY [MIRROR]
#
#   NAME:TAG   repository and tag, e.g. stacks/python:3.11
#   REGISTRY   host:port of a plain-http registry, e.g. 127.0.0.1:5000
#   MIRROR     Debian package mirror (default http://deb.debian.org/debian)
#
# The root filesystem is `debootstrap --variant=minbase bookworm` plus python3 from
# Debian's packages: the only network access is to the Debian package mirror. It takes a
# few minutes (package downloads + unpacking); tests/tests/stacks.rs runs it as a real site.
#
# The contract (see stacks/README.md): the site's files live in /home/site/wwwroot; the
# app listens on $PORT (default 8080). The entrypoint runs, in /home/site/wwwroot:
#   - `python3 app.py` if /home/site/wwwroot/app.py exists (it must listen on $PORT);
#   - otherwise `python3 -m http.server $PORT` (a placeholder index.html is copied into
#     an empty wwwroot first, as the static stack does).
#
# Needs: debootstrap, umoci, skopeo (apt-get install debootstrap umoci skopeo), root.
set -eu

usage() {
    echo "usage: $0 NAME:TAG REGISTRY [MIRROR]" >&2
    exit 2
}
[ $# -ge 2 ] && [ $# -le 3 ] || usage
NAME_TAG=$1
REGISTRY=$2
MIRROR=${3:-http://deb.debian.org/debian}
case "$NAME_TAG" in
*:*) NAME=${NAME_TAG%:*}; TAG=${NAME_TAG##*:} ;;
*) usage ;;
esac
[ -n "$NAME" ] && [ -n "$TAG" ] || usage
[ "$(id -u)" = 0 ] || { echo "$0: debootstrap needs root" >&2; exit 1; }
for tool in debootstrap umoci skopeo; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "$0: $tool is not installed: apt-get install debootstrap umoci skopeo" >&2
        exit 1
    }
done
case "$(uname -m)" in
x86_64) ARCH=amd64 ;;
aarch64) ARCH=arm64 ;;
*) echo "$0: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/berth-stack-python.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
LAYOUT=$WORK/oci
BUNDLE=$WORK/bundle

umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$TAG"
umoci unpack --image "$LAYOUT:$TAG" "$BUNDLE"
ROOTFS=$BUNDLE/rootfs

echo "debootstrap bookworm ($ARCH) from $MIRROR ..."
debootstrap --variant=minbase --arch="$ARCH" --include=python3,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -30 "$WORK/debootstrap.log" >&2
    echo "$0: debootstrap failed (log above)" >&2
    exit 1
}

# Trim what a container never uses: package caches and lists, docs, device nodes
# (the runtime provides /dev; Berth skips device nodes in layers anyway).
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/* "$ROOTFS"/debootstrap
find "$ROOTFS/dev" -mindepth 1 -delete
mkdir -p "$ROOTFS/opt/berth" "$ROOTFS/home/site"
echo "python" >"$ROOTFS/opt/berth/stack"
cat >"$ROOTFS/opt/berth/index.html" <<'HTML'
<!doctype html>
<html><head><meta charset="utf-8"><title>Berth python site</title></head>
<body><h1>berth python stack</h1>
<p>This site has no app yet. Put <code>app.py</code> (listening on <code>$PORT</code>)
or static files in <code>/home/site/wwwroot</code>.</p>
</body></html>
HTML
cat >"$ROOTFS/opt/berth/start" <<'START'
#!/bin/sh
# Berth python stack entrypoint: app.py if present, else a static file server.
root=/home/site/wwwroot
port=${PORT:-8080}
if mkdir -p "$root" 2>/dev/null; then
    cd "$root"
    if [ -f app.py ]; then
        echo "berth python stack: python3 $root/app.py (PORT=$port)" >&2
        exec python3 "$root/app.py"
    fi
    if [ -z "$(ls -A .)" ]; then
        cp /opt/berth/index.html index.html 2>/dev/null || true
    fi
else
    echo "berth python stack: $root is not writable, serving /opt/berth" >&2
    cd /opt/berth
fi
echo "berth python stack: python3 -m http.server $port in $(pwd)" >&2
exec python3 -m http.server "$port"
START
chmod 0755 "$ROOTFS/opt/berth/start"
"$ROOTFS/usr/bin/python3" --version >/dev/null 2>&1 || chroot "$ROOTFS" python3 --version >/dev/null

umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
PYVER=$(chroot "$ROOTFS" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
umoci config --image "$LAYOUT:$TAG" \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env PORT=8080 \
    --config.env LANG=C.UTF-8 \
    --config.env PYTHONUNBUFFERED=1 \
    --config.env BERTH_STACK=python \
    --config.workingdir / \
    --config.exposedports 8080/tcp \
    --config.entrypoint /opt/berth/start \
    --config.label org.opencontainers.image.title=berth-stack-python \
    --config.label "org.opencontainers.image.version=$PYVER" \
    --os linux --architecture "$ARCH"
umoci gc --layout "$LAYOUT"

skopeo copy --quiet --dest-tls-verify=false \
    "oci:$LAYOUT:$TAG" "docker://$REGISTRY/$NAME:$TAG"
echo "pushed $REGISTRY/$NAME:$TAG (python $PYVER)"
