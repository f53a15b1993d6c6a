#!/bin/sh
# Build Berth's `static` stack image (busybox httpd) and push it to a registry.
#
#   stacks/static/build.sh NAME:TAG REGISTRY
#
#   NAME:TAG   repository and tag, e.g. stacks/static:1
#   REGISTRY   host:port of a plain-http registry, e.g. 127.0.0.1:5000
#
# The contract (see stacks/README.md): the site's files live in /home/site/wwwroot (the
# site's shared, persistent /home); the server listens on $PORT (default 8080). At start
# the entrypoint creates /home/site/wwwroot if missing; if it is empty it copies a
# placeholder index.html there (like a fresh site on other platforms) so "/" answers.
# If /home is not writable it serves the image's /www instead.
#
# Built only from the host's busybox-static: no network needed.
# Needs: umoci, skopeo, busybox-static (apt-get install umoci skopeo busybox-static).
set -eu
. "$(dirname "$0")/../../scripts/lib/oci.sh"

usage() {
    echo "usage: $0 NAME:TAG REGISTRY" >&2
    exit 2
}
[ $# -eq 2 ] || usage
NAME_TAG=$1
REGISTRY=$2
case "$NAME_TAG" in
*:*) NAME=${NAME_TAG%:*}; TAG=${NAME_TAG##*:} ;;
*) usage ;;
esac
[ -n "$NAME" ] && [ -n "$TAG" ] || usage

oci_require umoci skopeo
oci_require_busybox
oci_arch

oci_begin berth-stack-static

mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/home" "$ROOTFS/tmp" "$ROOTFS/www" \
    "$ROOTFS/opt/berth" "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
chmod 1777 "$ROOTFS/tmp"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
chmod 0755 "$ROOTFS/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$ROOTFS/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$ROOTFS/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOTFS/etc/group"
echo "static" >"$ROOTFS/opt/berth/stack"

cat >"$ROOTFS/opt/berth/index.html" <<'HTML'
<!doctype html>
<html><head><meta charset="utf-8"><title>Berth static site</title></head>
<body><h1>berth static stack</h1>
<p>This site has no content yet. Put your files in <code>/home/site/wwwroot</code>.</p>
</body></html>
HTML
cp "$ROOTFS/opt/berth/index.html" "$ROOTFS/www/index.html"

cat >"$ROOTFS/opt/berth/start" <<'START'
#!/bin/sh
# Berth static stack entrypoint: serve /home/site/wwwroot on $PORT with busybox httpd.
root=/home/site/wwwroot
if mkdir -p "$root" 2>/dev/null && [ -w "$root" ]; then
    if [ -z "$(ls -A "$root")" ]; then
        cp /opt/berth/index.html "$root/index.html" || true
    fi
else
    echo "berth static stack: $root is not writable, serving the image's /www" >&2
    root=/www
fi
echo "berth static stack: serving $root on port ${PORT:-8080}" >&2
/bin/busybox httpd -f -v -p "${PORT:-8080}" -h "$root" &
pid=$!
trap 'kill -TERM $pid; wait $pid; exit 0' TERM INT
wait $pid
START
chmod 0755 "$ROOTFS/opt/berth/start"

umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
umoci config --image "$LAYOUT:$TAG" \
    --config.env PATH=/bin \
    --config.env PORT=8080 \
    --config.env BERTH_STACK=static \
    --config.workingdir / \
    --config.exposedports 8080/tcp \
    --config.entrypoint /opt/berth/start \
    --config.label org.opencontainers.image.title=berth-stack-static \
    --os linux --architecture "$ARCH"
oci_push "$REGISTRY" "$NAME" "$TAG"
