//! Simulated workers: network namespaces joined to this host by a bridge, each with
//! one veth end, all on a /24 made up for the test (no traffic leaves the machine).
//!
//! ```text
//! host: bridge bb<id> 10.<x>.<y>.1/24
//!   ├── veth vb<id>a ── netns bw<id>a: eth0 10.<x>.<y>.2
//!   └── veth vb<id>b ── netns bw<id>b: eth0 10.<x>.<y>.3
//! ```
//!
//! Everything is deleted on drop, also when the test failed.

use std::path::PathBuf;
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge on the host and `n` network namespaces attached to it.
pub struct Workers {
    bridge: String,
    names: Vec<String>,
    /// The host's address on the bridge (where a server listens).
    pub host_ip: String,
    /// Each namespace's address.
    pub ips: Vec<String>,
}

impl Workers {
    pub fn new(n: usize) -> Workers {
        // Unique per test in this process (tests run in parallel) and per process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n_this = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() * 8 + n_this) % 100_000;
        let subnet = format!("10.{}.{}", 200 + id % 50, (id / 50) % 250);
        let bridge = format!("bb{id}");
        let mut workers = Workers {
            bridge: bridge.clone(),
            names: Vec::new(),
            host_ip: format!("{subnet}.1"),
            ips: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", workers.host_ip),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..n {
            let tag = (b'a' + i as u8) as char;
            let ns = format!("bw{id}{tag}");
            let veth = format!("vb{id}{tag}");
            let addr = format!("{subnet}.{}", i + 2);
            ip(&["netns", "add", &ns]);
            workers.names.push(ns.clone());
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            workers.ips.push(addr);
        }
        workers
    }

    /// `/run/netns/<name>` of worker `i`.
    pub fn netns(&self, i: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.names[i])
    }

    /// Runs `cmd` in worker `i`'s namespace and returns whether it exited 0.
    pub fn exec_ok(&self, i: usize, cmd: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.names[i]])
            .args(cmd)
            .output()
            .expect("running ip netns exec")
            .status
            .success()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
