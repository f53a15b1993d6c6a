# Sourced by Berth's image build scripts (demo site, attacker image, stack images):
# the steps they share for building an OCI image with umoci and pushing it with
# skopeo. Each function exits with an apt hint when something is missing.

# oci_require TOOL... : every tool must be on PATH.
oci_require() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || {
            echo "$0: $tool is not installed: run scripts/install-deps.sh (apt-get install $tool)" >&2
            exit 1
        }
    done
}

# oci_require_busybox : sets BUSYBOX to a static busybox (the images have no libc).
oci_require_busybox() {
    BUSYBOX=/bin/busybox
    [ -x "$BUSYBOX" ] && "$BUSYBOX" --list >/dev/null 2>&1 || {
        echo "$0: $BUSYBOX is missing: apt-get install busybox-static" >&2
        exit 1
    }
    if ldd "$BUSYBOX" >/dev/null 2>&1; then
        echo "$0: $BUSYBOX is dynamically linked: install busybox-static, not busybox" >&2
        exit 1
    fi
}

# oci_arch : sets ARCH to the OCI name of this machine's architecture.
oci_arch() {
    case "$(uname -m)" in
    x86_64) ARCH=amd64 ;;
    aarch64) ARCH=arm64 ;;
    *) ARCH=$(uname -m) ;;
    esac
}

# oci_begin PREFIX [TMPBASE] : a scratch dir (removed on exit) holding a new OCI
# layout with an empty image TAG unpacked; sets WORK, LAYOUT, BUNDLE and ROOTFS.
oci_begin() {
    WORK=$(mktemp -d "${2:-${TMPDIR:-/tmp}}/$1.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT INT TERM
    LAYOUT=$WORK/oci
    BUNDLE=$WORK/bundle
    umoci init --layout "$LAYOUT"
    umoci new --image "$LAYOUT:$TAG"
    umoci unpack --image "$LAYOUT:$TAG" "$BUNDLE"
    ROOTFS=$BUNDLE/rootfs
}

# oci_push REGISTRY NAME TAG : drops unreferenced blobs and pushes over plain HTTP
# (the registries these scripts target are local).
oci_push() {
    umoci gc --layout "$LAYOUT"
    skopeo copy --quiet --dest-tls-verify=false \
        "oci:$LAYOUT:$3" "docker://$1/$2:$3"
    echo "pushed $1/$2:$3"
}
