#!/usr/bin/env bash
# Runs sandboxd's real tests on cgroup v2, inside a throw-away VM (KVM, else TCG).
#
# Why: the worker machines Berth is developed on have the cgroup v1 hybrid layout
# (no controllers on the unified hierarchy), so `cargo test -p berth-sandboxd` there
# exercises the v1 code paths only. This script boots Debian's stock kernel with
# `cgroup_no_v1=all` (every controller on the unified hierarchy), mounts cgroup2 at
# /sys/fs/cgroup with +cpu +memory +pids +io enabled in the subtree, and runs the SAME
# test binaries (sandboxd's lib unit tests and tests/daemon.rs) there as root.
#
# Run as root, ideally on a machine with /dev/kvm (else TCG, slower). scripts/test.sh
# (and so CI) runs it after the workspace tests; about a minute once the kernel package
# is downloaded. Results and what it
# found: docs/security.md, the "cgroup v2" paragraph under Resources. Usage:
#
#   sudo scripts/cgroup-v2-vm.sh            # build the tests, boot, run, exit with their code
#   sudo scripts/cgroup-v2-vm.sh --no-build # reuse the test binaries built last time
#   sudo scripts/cgroup-v2-vm.sh -- ARGS... # pass arguments to every test binary
#                                           # (e.g. -- hardened_sandbox --nocapture)
#
# Environment: BERTH_CGV2_CACHE (default /var/cache/berth-cgv2: kernel, initramfs),
# BERTH_CGV2_MEM (guest memory, default 2G), BERTH_CGV2_CPUS (default 2),
# BERTH_CGV2_TIMEOUT (seconds for the whole guest run, default 1800),
# BERTH_CGV2_ACCEL (auto, kvm or tcg; auto probes KVM and falls back to TCG),
# BERTH_CGV2_BFQ=1 to load the bfq io scheduler module in the guest (then libcgroups
# writes io.bfq.weight instead of io.weight).
#
# What it does (idempotent; the second run only boots):
#   1. apt-get installs qemu-system-x86 and busybox-static if missing.
#   2. `apt-get download`s the linux-image-6.1.0-*-amd64 package that the
#      linux-image-amd64 metapackage depends on and unpacks it with `dpkg -x` into the
#      cache directory. Nothing is installed on the host.
#   3. Builds an initramfs: static busybox, the modules needed to mount the host's
#      root over virtio-9p (virtio_pci, 9pnet_virtio, 9p, netfs, fscache, ...), overlay,
#      veth (and bfq with BERTH_CGV2_BFQ=1), with their dependencies resolved from
#      modules.dep (made with `busybox depmod`) and insmod'ed in dependency order.
#   4. Boots the kernel under KVM, or TCG emulation when a 15 s KVM probe does not
#      print the kernel banner (nested KVM on AMD EPYC here hangs in the decompressor).
#      The guest mounts the host's / read-only over 9p, tmpfs on /tmp, /run, /var/tmp
#      and /root (with the checkout and the test binaries bound back on top when they
#      lie under one of those), cgroup2 on /sys/fs/cgroup, switch_root's into it and runs the test
#      binaries found by `cargo test -p berth-sandboxd --no-run`.
#   5. Prints the guest's console and exits with the tests' exit code.
# The guest side is this same script, called with --guest inside the VM.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

# ---------------------------------------------------------------------------------
# Guest side: runs inside the VM, in the chroot onto the host's root.
# ---------------------------------------------------------------------------------
guest_main() {
    local args=("$@")
    cd "$repo"
    echo "== guest: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
    echo "== guest: /sys/fs/cgroup is $(stat -f -c %T /sys/fs/cgroup)"
    echo "== guest: cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
    echo "== guest: cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
    local v1
    v1="$(awk '$3 == "cgroup" {print $2}' /proc/mounts)"
    if [[ -n "$v1" ]]; then
        echo "== guest: cgroup v1 hierarchies are mounted ($v1): not a pure v2 run" >&2
        return 70
    fi
    local rc=0 bin name
    while read -r bin; do
        [[ -n "$bin" ]] || continue
        name="$(basename "$bin")"
        echo "== guest: running $name ${args[*]}"
        local start=$SECONDS
        # --test-threads=1 is not needed (the tests use unique names); keep cargo's default.
        if "$bin" "${args[@]}" 2>&1; then
            echo "== guest: $name passed in $((SECONDS - start)) s"
        else
            local r=$?
            echo "== guest: $name FAILED (exit $r) after $((SECONDS - start)) s"
            rc=1
        fi
    done < "$repo/target/cgroup-v2-vm/tests.list"
    return "$rc"
}

if [[ "${1:-}" == "--guest" ]]; then
    shift
    set +e
    guest_main "$@"
    rc=$?
    echo "BERTH_CGV2_RESULT=$rc"
    if [[ $$ == 1 ]]; then
        sync
        busybox poweroff -f 2>/dev/null || echo o > /proc/sysrq-trigger
        sleep 10
    fi
    exit "$rc"
fi

# ---------------------------------------------------------------------------------
# Host side.
# ---------------------------------------------------------------------------------
build=1
test_args=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --no-build) build=0 ;;
    --) shift; test_args="$*"; break ;;
    -h | --help) sed -n '2,40p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

[[ "$(id -u)" == 0 ]] || { echo "run as root (apt-get, KVM, and the tests need it)" >&2; exit 1; }

cache="${BERTH_CGV2_CACHE:-/var/cache/berth-cgv2}"
mem="${BERTH_CGV2_MEM:-2G}"
cpus="${BERTH_CGV2_CPUS:-2}"
timeout_s="${BERTH_CGV2_TIMEOUT:-1800}"
mkdir -p "$cache"

log() { echo "== $*" >&2; }

# 1. Host tools.
missing=()
for pkg in qemu-system-x86 busybox-static; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi

# 2. Debian's kernel, unpacked into the cache (never installed).
kpkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[[ -n "$kpkg" ]] || { echo "cannot tell which kernel linux-image-amd64 depends on (apt-get update?)" >&2; exit 1; }
kver="${kpkg#linux-image-}"
kroot="$cache/$kpkg"
if [[ ! -f "$kroot/boot/vmlinuz-$kver" ]]; then
    log "downloading $kpkg"
    rm -rf "$kroot" "$cache/dl"
    mkdir -p "$cache/dl"
    (cd "$cache/dl" && apt-get download "$kpkg" >&2)
    dpkg -x "$cache"/dl/"$kpkg"_*.deb "$kroot"
    dpkg-deb -f "$cache"/dl/"$kpkg"_*.deb Version > "$kroot/.deb-version"
    rm -rf "$cache/dl"
fi
moddir="$kroot/lib/modules/$kver"
[[ -f "$moddir/modules.dep" ]] || busybox depmod -b "$kroot" "$kver"
kdeb_version="$(cat "$kroot/.deb-version")"

# 3. Initramfs. Modules wanted, by name; dependencies come from modules.dep.
wanted=(virtio_pci 9pnet_virtio 9p overlay veth)
[[ "${BERTH_CGV2_BFQ:-0}" == 1 ]] && wanted+=(bfq)
declare -A seen=()
order=()
resolve() { # depth-first: a module's dependencies before the module itself
    local name="$1" line path deps dep
    line="$(grep -E "/${name}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1)" ||
        { echo "module $name not in $moddir/modules.dep" >&2; exit 1; }
    path="${line%%:*}"
    [[ -n "${seen[$path]:-}" ]] && return 0
    seen[$path]=1
    deps="${line#*:}"
    for dep in $deps; do
        dep="$(basename "$dep")"
        resolve "${dep%%.ko*}"
    done
    order+=("$path")
}
for m in "${wanted[@]}"; do resolve "$m"; done

initrd="$cache/initramfs-$kver-${BERTH_CGV2_BFQ:-0}.cpio.gz"
ird="$cache/initramfs.d"
rm -rf "$ird"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,modules}
cp /bin/busybox "$ird/bin/busybox"
for a in sh mount umount mkdir insmod switch_root poweroff sleep cat echo ip; do
    ln -sf busybox "$ird/bin/$a"
done
: > "$ird/modules/order"
for p in "${order[@]}"; do
    case "$p" in
    *.ko) cp "$moddir/$p" "$ird/modules/" ;;
    *.ko.xz) xz -dc "$moddir/$p" > "$ird/modules/$(basename "${p%.xz}")" ;;
    *.ko.zst) zstd -qdc "$moddir/$p" > "$ird/modules/$(basename "${p%.zst}")" ;;
    *) echo "unknown module format $p" >&2; exit 1 ;;
    esac
    b="$(basename "$p")"
    echo "${b%%.ko*}.ko" >> "$ird/modules/order"
done
cat > "$ird/init" <<'INIT'
#!/bin/sh
# Guest init: modules, the host's root over 9p (read-only), writable tmpfs where the
# tests write, cgroup2 with every controller, then the tests in a chroot.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do
    insmod /modules/$m || echo "init: insmod $m failed"
done
fail() { echo "init: $*"; echo "BERTH_CGV2_RESULT=99"; poweroff -f; sleep 5; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot \
    || fail "mounting the host root over 9p failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm 2>/dev/null
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
# The checkout and the test binaries may lie under a directory the tmpfs mounts below
# hide (a CI clone in /tmp, say): hold them, then bind them back on top.
i=0
for k in $BERTH_KEEP; do
    mkdir -p /keep/$i && mount -o bind $R$k /keep/$i || fail "holding $k"
    i=$((i + 1))
done
for d in /tmp /run /var/tmp /root; do
    mount -t tmpfs -o mode=1777 tmpfs $R$d || fail "tmpfs on $d"
done
i=0
for k in $BERTH_KEEP; do
    mkdir -p $R$k 2>/dev/null
    mount -o bind /keep/$i $R$k || fail "binding $k back"
    i=$((i + 1))
done
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup || fail "mounting cgroup2"
echo "+cpu +memory +pids +io" > $R/sys/fs/cgroup/cgroup.subtree_control \
    || fail "enabling controllers in cgroup.subtree_control"
ip link set lo up
# switch_root, not chroot: in a chroot, unshare(CLONE_NEWUSER) fails with EPERM
# (the process root must be its mount namespace's root), and the tests need user
# namespaces. The guest script runs as pid 1 and powers the VM off at the end.
exec switch_root $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root RUST_BACKTRACE=1 /bin/bash "$BERTH_SCRIPT" --guest $BERTH_TEST_ARGS
INIT
chmod 755 "$ird/init"
(cd "$ird" && find . | busybox cpio -H newc -o 2>/dev/null | gzip -1) > "$initrd"
log "initramfs: ${#order[@]} modules (${order[*]##*/})"

# 4. The test binaries (host build; the guest runs them from the shared root).
listdir="$repo/target/cgroup-v2-vm"
mkdir -p "$listdir"
if [[ "$build" == 1 ]]; then
    log "building sandboxd's tests (cargo test -p berth-sandboxd --no-run)"
    (cd "$repo" && cargo test -p berth-sandboxd --no-run --message-format=json) |
        jq -r 'select(.reason == "compiler-artifact" and .executable != null and .profile.test == true)
               | .executable' > "$listdir/tests.list"
fi
[[ -s "$listdir/tests.list" ]] || { echo "no test binaries listed in $listdir/tests.list (run without --no-build)" >&2; exit 1; }
log "tests: $(xargs -n1 basename < "$listdir/tests.list" | tr '\n' ' ')"
# What the guest must still see after its tmpfs mounts: the checkout and the profile
# directories of the test binaries (target/debug: the tests in deps/ and the daemon
# binaries they start; CARGO_TARGET_DIR may be outside the checkout).
keep="$(printf '%s\n' "$repo" $(xargs -n1 dirname < "$listdir/tests.list" | xargs -n1 dirname) | sort -u | tr '\n' ' ')"

# 5. Boot. KVM when the kernel boots under it; some nested hosts (seen: a Firecracker
# VM on AMD EPYC) hang KVM guests in the kernel's decompressor, so probe first
# (15 s, no initramfs: the kernel prints its banner, then panics for want of a root)
# and fall back to TCG emulation, which is slower but runs the same guest.
accel="${BERTH_CGV2_ACCEL:-auto}"
if [[ "$accel" == auto && ! -w /dev/kvm ]]; then
    accel=tcg
elif [[ "$accel" == auto ]]; then
    if timeout 15 qemu-system-x86_64 -enable-kvm -cpu host,-arch-capabilities -m 256M \
        -nodefaults -no-user-config -nographic -no-reboot -serial stdio -monitor none \
        -kernel "$kroot/boot/vmlinuz-$kver" -append "console=ttyS0 panic=-1" </dev/null 2>&1 |
        grep -q "Linux version"; then
        accel=kvm
    else
        log "a KVM guest did not print the kernel banner in 15 s: using TCG emulation"
        accel=tcg
    fi
fi
case "$accel" in
# -arch-capabilities: nested KVM here refuses MSR 0x10a (IA32_ARCH_CAPABILITIES).
kvm) accel_args=(-enable-kvm -cpu host,-arch-capabilities) ;;
tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
*) echo "BERTH_CGV2_ACCEL must be auto, kvm or tcg" >&2; exit 2 ;;
esac
consolelog="$listdir/console.log"
log "booting $kpkg ${kdeb_version} ($accel, ${cpus} cpus, ${mem}); console -> $consolelog"
set +e
timeout "$timeout_s" qemu-system-x86_64 \
    "${accel_args[@]}" -smp "$cpus" -m "$mem" \
    -nodefaults -no-user-config -nographic -no-reboot \
    -serial stdio -monitor none \
    -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 cgroup_no_v1=all rdinit=/init BERTH_SCRIPT=$repo/scripts/cgroup-v2-vm.sh BERTH_TEST_ARGS=\"$test_args\" BERTH_KEEP=\"$keep\"" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    </dev/null 2>&1 | tee "$consolelog"
qrc=${PIPESTATUS[0]}
set -e
[[ "$qrc" == 124 ]] && { echo "guest timed out after ${timeout_s} s" >&2; exit 124; }
result="$(tr -d '\r' < "$consolelog" | sed -n 's/^BERTH_CGV2_RESULT=\([0-9]*\)$/\1/p' | tail -1)"
if [[ -z "$result" ]]; then
    echo "the guest printed no result line (qemu exit $qrc): see $consolelog" >&2
    exit 1
fi
log "cgroup v2 guest ($kpkg $kdeb_version): tests exit code $result"
exit "$result"
