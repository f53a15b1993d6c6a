#!/bin/sh
# Build Berth's "attacker" image for the isolation tests and push it to a registry.
#
#   scripts/build-attack-image.sh NAME:TAG REGISTRY [--workdir DIR]
#
#   --workdir DIR  the image's working directory (default /). The CVE-2024-21626 case
#                  builds a variant with /proc/self/fd/N: a runtime that leaks a host
#                  directory descriptor would start the app with a cwd outside the root.
#
# The image is the demo image's shape (busybox-static httpd + CGI, see build-image.sh)
# plus the attack program tests/isolation/*.c (main in attack.c), compiled here with `gcc -static`:
#   /bin/attack                  the attack cases (see the header of attack.c)
#   /bin/attack-suid             the same binary, setuid root (mode 4755): the setuid case
#   /etc/shared-layer-file       "ORIGINAL": the layer-tamper case checks no other site
#                                sees a write to it
#   /www/cgi-bin/attack          CGI: GET /cgi-bin/attack?CASE&KEY=VALUE&... runs
#                                `/bin/attack CASE KEY=VALUE ...` and prints its output,
#                                then "exit: STATUS"
# Entrypoint: busybox httpd on $PORT, stopping on SIGTERM.
#
# Needs: gcc + libc6-dev (libc.a), umoci, skopeo, busybox-static.
set -eu
. "$(dirname "$0")/lib/oci.sh"

usage() {
    echo "usage: $0 NAME:TAG REGISTRY [--workdir DIR]" >&2
    exit 2
}

[ $# -eq 2 ] || [ $# -eq 4 ] || usage
NAME_TAG=$1
REGISTRY=$2
WORKDIR=/
if [ $# -eq 4 ]; then
    [ "$3" = "--workdir" ] || usage
    WORKDIR=$4
fi
case "$NAME_TAG" in
*:*) NAME=${NAME_TAG%:*}; TAG=${NAME_TAG##*:} ;;
*) usage ;;
esac
[ -n "$NAME" ] && [ -n "$TAG" ] || usage

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$HERE/../tests/isolation
[ -f "$SRC/attack.c" ] || { echo "$0: $SRC/attack.c is missing" >&2; exit 1; }
oci_require gcc umoci skopeo
oci_require_busybox
oci_arch
oci_begin berth-attack-image

# -static: the image has no libc. The linker's warnings about getaddrinfo in static
# binaries do not apply (the program never resolves names).
gcc -static -O1 -Wall -o "$WORK/attack" "$SRC"/*.c 2>"$WORK/gcc.log" || {
    cat "$WORK/gcc.log" >&2
    echo "$0: compiling $SRC failed (needs gcc and libc6-dev)" >&2
    exit 1
}

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
echo ORIGINAL >"$ROOTFS/etc/shared-layer-file"
chmod 0644 "$ROOTFS/etc/shared-layer-file"
install -m 0755 -o 0 -g 0 "$WORK/attack" "$ROOTFS/bin/attack"
install -m 4755 -o 0 -g 0 "$WORK/attack" "$ROOTFS/bin/attack-suid"

cat >"$ROOTFS/www/cgi-bin/attack" <<'CGI'
#!/bin/sh
# GET /cgi-bin/attack?CASE&KEY=VALUE...: run one attack case, print its output and status.
printf 'Content-Type: text/plain\r\n\r\n'
IFS='&'
# shellcheck disable=SC2086 # split the query on '&' on purpose
set -- ${QUERY_STRING:-}
unset IFS
case "$1" in
# The web server's stderr is the instance log: log_flood gets it as fd 3.
log_flood) /bin/attack "$@" 3>&2 2>&1 ;;
*) /bin/attack "$@" 2>&1 ;;
esac
echo "exit: $?"
CGI
chmod 0755 "$ROOTFS/www/cgi-bin/attack"
printf '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nattacker image\\n"\n' \
    >"$ROOTFS/www/cgi-bin/index.cgi"
chmod 0755 "$ROOTFS/www/cgi-bin/index.cgi"

umoci repack --image "$LAYOUT:$TAG" "$BUNDLE"
umoci config --image "$LAYOUT:$TAG" \
    --config.env PATH=/bin \
    --config.env PORT=8080 \
    --config.workingdir "$WORKDIR" \
    --config.exposedports 8080/tcp \
    --os linux --architecture "$ARCH" \
    --config.entrypoint /bin/sh \
    --config.entrypoint -c \
    --config.entrypoint '/bin/busybox httpd -f -v -p "${PORT:-8080}" -h /www & pid=$!; trap "kill -TERM \$pid; wait \$pid; exit 0" TERM INT; wait $pid'
oci_push "$REGISTRY" "$NAME" "$TAG"
