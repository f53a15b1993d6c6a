//! Harness for Berth's end-to-end tests: a real `docker-registry`, images built with
//! `scripts/build-image.sh` (umoci + skopeo), and a whole unit started with `berth up`
//! from the workspace's built binaries. Everything runs for real, as root; anything
//! missing makes the test panic with what to install — it never passes empty.
//!
//! The binaries must be built first (`cargo build --workspace --bins`, which
//! `scripts/test.sh` does): `cargo test` does not build other packages' binaries.

pub mod attack;
pub mod host;
pub mod unit;

pub use unit::{
    body, instance_ids, instance_of, page_field, wait_for, JoinedWorker, Registry, Unit,
};

use std::path::PathBuf;

/// The workspace root (for scripts/).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Directory holding the built binaries (target/debug next to this test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/e2e-xxxx -> target/debug
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    for b in [
        "berth",
        "berth-controller",
        "berth-frontend",
        "berth-agent",
        "berth-sandboxd",
        "berth-fsd",
    ] {
        assert!(
            dir.join(b).exists(),
            "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
            dir.join(b).display()
        );
    }
    dir
}

/// Panics unless we are root: these tests need namespaces, cgroups and FUSE.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "end-to-end tests need root (namespaces, cgroups, FUSE): run scripts/test.sh as root"
    );
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: load the fuse module (modprobe fuse)"
    );
}

/// A free loopback TCP port base with `span` consecutive free ports after it.
pub fn free_port_base(span: u16) -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    'outer: for _ in 0..200 {
        let base: u16 = rng.gen_range(20000..50000);
        for p in [0u16, 1, 2, 3, 4, 5, 6, 7, 380]
            .iter()
            .chain(std::iter::once(&span))
        {
            if std::net::TcpListener::bind(("127.0.0.1", base + p)).is_err() {
                continue 'outer;
            }
        }
        return base;
    }
    panic!("no free port range found on 127.0.0.1");
}
