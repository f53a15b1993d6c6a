#!/bin/sh
# Build Berth's demo site image from Debian's busybox-static and push it to a registry.
#
#   scripts/build-image.sh NAME:TAG REGISTRY [--no-entrypoint]
#
#   NAME:TAG         repository and tag, e.g. hello:1 or demo/hello:1
#   REGISTRY         host:port of a plain-http registry, e.g. 127.0.0.1:5000
#   --no-entrypoint  build the same image without entrypoint or cmd (a bad input that
#                    Berth must reject at site creation)
#
# The image: /bin/busybox with applet symlinks, /www/cgi-bin/index.cgi (busybox httpd runs
# it for "/" since there is no index.html), entrypoint
#   /bin/sh -c 'exec /bin/busybox httpd -f -v -p "${PORT:-8080}" -h /www'
# The CGI prints "instance: ID", "site: NAME", "visits: N" (a counter in /home/visits);
# "?write=KEY" writes the instance id to /home/KEY and adds "wrote: KEY";
# "?read=KEY" adds "value: CONTENT" (or "value: <missing>").
#
# Needs: umoci, skopeo, busybox-static (apt-get install umoci skopeo busybox-static).
set -eu
. "$(dirname "$0")/lib/oci.sh"

usage() {
    echo "usage: $0 NAME:TAG REGISTRY [--no-entrypoint]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
NAME_TAG=$1
REGISTRY=$2
ENTRYPOINT=yes
if [ $# -ge 3 ]; then
    [ "$3" = "--no-entrypoint" ] || usage
    ENTRYPOINT=no
fi
case "$NAME_TAG" in
*:*) NAME=${NAME_TAG%:*}; TAG=${NAME_TAG##*:} ;;
*) usage ;;
esac
[ -n "$NAME" ] && [ -n "$TAG" ] || usage

oci_require umoci skopeo
oci_require_busybox

oci_arch

oci_begin berth-build-image

mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$ROOTFS/home" "$ROOTFS/tmp" "$ROOTFS/www/cgi-bin" \
    "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev"
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

cat >"$ROOTFS/www/cgi-bin/index.cgi" <<'CGI'
#!/bin/sh
# Berth demo site: who served me, which site, how many visits (shared /home counter).
id=${BERTH_INSTANCE_ID:-$(hostname)}
printf 'Content-Type: text/plain\r\n\r\n'
echo "instance: $id"
echo "site: ${BERTH_SITE:-}"
n=$(cat /home/visits 2>/dev/null || true)
case "$n" in '' | *[!0-9]*) n=0 ;; esac
n=$((n + 1))
if echo "$n" >"/home/.visits.$BERTH_INSTANCE_ID.$$" 2>/dev/null && mv -f "/home/.visits.$BERTH_INSTANCE_ID.$$" /home/visits; then
    echo "visits: $n"
else
    rm -f "/home/.visits.$BERTH_INSTANCE_ID.$$"
    echo "visits: $n (not saved: /home is not writable)"
fi
key=
case "${QUERY_STRING:-}" in
write=* | read=*) key=${QUERY_STRING#*=} ;;
esac
case "$key" in
*[!A-Za-z0-9_.-]* | .*) echo "error: bad key" ; exit 0 ;;
esac
case "${QUERY_STRING:-}" in
write=?*)
    if echo "$id" >"/home/$key"; then echo "wrote: $key"; else echo "error: write $key failed"; fi
    ;;
read=?*)
    if [ -f "/home/$key" ]; then echo "value: $(cat "/home/$key")"; else echo "value: <missing>"; fi
    ;;
esac
CGI
chmod 0755 "$ROOTFS/www/cgi-bin/index.cgi"

umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
umoci config --image "$LAYOUT:$TAG" \
    --config.env PATH=/bin \
    --config.env PORT=8080 \
    --config.workingdir / \
    --config.exposedports 8080/tcp \
    --os linux --architecture "$ARCH"
if [ "$ENTRYPOINT" = yes ]; then
    umoci config --image "$LAYOUT:$TAG" \
        --config.entrypoint /bin/sh \
        --config.entrypoint -c \
        --config.entrypoint '/bin/busybox httpd -f -v -p "${PORT:-8080}" -h /www & pid=$!; trap "kill -TERM \$pid; wait \$pid; exit 0" TERM INT; wait $pid'
else
    umoci config --image "$LAYOUT:$TAG" --clear=config.entrypoint --clear=config.cmd
fi
oci_push "$REGISTRY" "$NAME" "$TAG"
