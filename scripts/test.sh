#!/usr/bin/env bash
# README command 2: installs what the tests need and runs every test (unit, crate
# integration tests as root, and the end-to-end tests in tests/), plus fmt and clippy.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (sudo): the tests create namespaces, cgroups and FUSE mounts" >&2; exit 1; }
./scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export RUST_BACKTRACE=1
t0=$(date +%s)
cargo fmt --all -- --check
cargo build --workspace --bins --tests
echo "build done in $(( $(date +%s) - t0 ))s"
cargo test --workspace --no-fail-fast -- --test-threads=2
echo "tests done in $(( $(date +%s) - t0 ))s"
# cgroup v2: this machine has the v1 hybrid layout, so sandboxd's lib and daemon tests
# run again in a VM booted with cgroup_no_v1=all (Debian's kernel, host root over 9p).
./scripts/cgroup-v2-vm.sh
echo "cgroup v2 VM tests done in $(( $(date +%s) - t0 ))s"
cargo clippy --workspace --all-targets -- -D warnings
echo "clippy done in $(( $(date +%s) - t0 ))s"
