//! Sandbox egress through a whole Berth: a site's instance reaches a simulated external
//! service (its own namespace behind a veth, 10.241.x.2) through the veth and NAT the
//! agent made, cannot reach the worker (a host listener on every address, the platform
//! ports), is refused its 1,921st open connection (counted), shows its figures on the
//! agent's `/metrics`, and leaves no veth, nftables
//! object or address claim behind once deleted.
//!
//! Traffic goes only to namespaces this test creates or to the host's own addresses
//! (which must refuse it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use berth_tests::{host, require_root, wait_for, Registry, Unit};
use nix::sched::{setns, CloneFlags};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread inside the named network namespace.
fn in_netns<T: Send + 'static>(
    path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::spawn(move || {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

struct External {
    name: String,
    host_if: String,
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Raises this process's soft open-file limit to `n` (at most the hard limit).
fn raise_nofile(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = n.min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

fn nft_table() -> String {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "berth"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn site_egress_isolation_and_cleanup() {
    require_root();
    let reg = Registry::start();
    let image = reg.push_demo_image("net:1", &[]);
    let mut u = Unit::up(1.0);
    u.berth_ok(&["sites", "create", "net", "--image", &image]);
    let id = u.site("net")["instance_states"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let suffix = id.rsplit('-').next().unwrap().to_string();
    let veth = format!("bv{suffix}");
    assert!(
        host::links_containing(&veth).contains(&veth),
        "the instance has its veth {veth}"
    );
    let sandbox_ns = format!("/run/netns/berth-{id}");

    // The external service.
    let tag: String = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ext = External {
        name: format!("berth-ext-{tag}"),
        host_if: format!("bx{tag}"),
    };
    let octet = 1 + rand::random::<u8>() % 250;
    let ext_addr = Ipv4Addr::new(10, 241, octet, 2);
    ip(&["netns", "add", &ext.name]);
    ip(&[
        "link",
        "add",
        &ext.host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &ext.name,
    ]);
    ip(&[
        "addr",
        "add",
        &format!("10.241.{octet}.1/24"),
        "dev",
        &ext.host_if,
    ]);
    ip(&["link", "set", &ext.host_if, "up"]);
    ip(&["-n", &ext.name, "link", "set", "lo", "up"]);
    ip(&[
        "-n",
        &ext.name,
        "addr",
        "add",
        &format!("{ext_addr}/24"),
        "dev",
        "eth0",
    ]);
    ip(&["-n", &ext.name, "link", "set", "eth0", "up"]);
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(&format!("/run/netns/{}", ext.name), move || {
        let l = TcpListener::bind((ext_addr, 0)).expect("bind in the external namespace");
        tx.send(l.local_addr().unwrap()).unwrap();
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    let service: SocketAddr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // A second service that keeps every connection open, for the connection limit.
    // A message on `release` closes everything it holds.
    let (tx, rx) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    in_netns(&format!("/run/netns/{}", ext.name), move || {
        let l = TcpListener::bind((ext_addr, 0)).expect("bind in the external namespace");
        l.set_nonblocking(true).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let mut held = Vec::new();
        loop {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match released.try_recv() {
                        Ok(()) => held.clear(),
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                        Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
    });
    let holder: SocketAddr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    // 1,920 connections each way live in this process.
    raise_nofile(8192);

    // A host listener on every address stands in for anything the worker serves.
    let host_l = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = host_l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in host_l.incoming().flatten() {
            let _ = (&s).write_all(b"host");
        }
    });

    let gateway: Ipv4Addr = {
        // the host end's address: the sandbox's default gateway
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &veth])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address on {veth}: {text}"))
    };
    let pb = u.port_base;
    let results = in_netns(&sandbox_ns, move || {
        let try_connect =
            |to: SocketAddr| TcpStream::connect_timeout(&to, Duration::from_millis(1500));
        let mut echo = try_connect(service).map_err(|e| format!("egress: {e}"))?;
        echo.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        echo.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        echo.read_exact(&mut buf)
            .map_err(|e| format!("echo: {e}"))?;
        let mut reached = Vec::new();
        // the worker through the veth's host end: the host listener and every platform port
        for port in [host_port, pb, pb + 1, pb + 2, pb + 3, pb + 4, pb + 5] {
            let to = SocketAddr::from((gateway, port));
            if try_connect(to).is_ok() {
                reached.push(to.to_string());
            }
        }
        // the platform ports on loopback are the sandbox's own loopback, where none listen
        for port in [pb, pb + 1, pb + 3, pb + 4] {
            let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if try_connect(to).is_ok() {
                reached.push(to.to_string());
            }
        }
        Ok::<_, String>(reached)
    })
    .join()
    .unwrap();
    let reached = results.unwrap_or_else(|e| panic!("{e}\n{}", u.daemon_logs()));
    assert!(
        reached.is_empty(),
        "the sandbox reached the worker at {reached:?}"
    );

    // The outbound connection limit (1,920 open at once): the next one is refused,
    // counted, and once the open ones close new ones pass again.
    let limit = 1920usize;
    let (opened, refused) = in_netns(&sandbox_ns, move || {
        let mut open = Vec::new();
        let mut refused = None;
        for _ in 0..limit + 5 {
            match TcpStream::connect_timeout(&holder, Duration::from_secs(2)) {
                Ok(s) => open.push(s),
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        let n = open.len();
        drop(open);
        (n, refused)
    })
    .join()
    .unwrap();
    assert!(
        refused.is_some() && (limit - 2..=limit).contains(&opened),
        "{opened} connections opened before the limit of {limit} refused one ({refused:?})"
    );
    release.send(()).unwrap();
    // The kernel's count (nf_conncount) drops closed connections lazily, a few per new
    // attempt: refused attempts drain it, then one passes.
    let ns = sandbox_ns.clone();
    let attempts = in_netns(&ns, move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            n += 1;
            if TcpStream::connect_timeout(&holder, Duration::from_millis(500)).is_ok() {
                return Some(n);
            }
        }
        None
    })
    .join()
    .unwrap()
    .unwrap_or_else(|| panic!("no new connection passed within 30 s after the open ones closed"));
    println!("network: after closing {opened} connections, attempt {attempts} passed");

    // Figures on the agent's /metrics.
    let metrics = reqwest::blocking::get(format!("http://127.0.0.1:{}/metrics", pb + 4))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("berth_agent_outbound_connection_limit 1920"),
        "{metrics}"
    );
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "berth_agent_outbound_connections_rejected_total{{instance=\"{id}\"}} "
            ))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rejected counter of {id}:\n{metrics}"));
    assert!(
        rejected >= 1,
        "the refused connection is counted: {rejected}"
    );

    // Delete: no veth, nftables object or address claim remains.
    u.berth_ok(&["sites", "delete", "net"]);
    wait_for(
        Duration::from_secs(40),
        "the deleted instance's network to go",
        || {
            host::links_containing(&suffix).is_empty()
                && !nft_table().contains(&veth)
                && std::fs::read_dir("/run/berth/net/claims")
                    .map(|d| {
                        d.flatten()
                            .all(|e| std::fs::read_to_string(e.path()).is_ok_and(|c| c != id))
                    })
                    .unwrap_or(true)
        },
    );
    u.down();
}
