//! Pull progress through the product path: an image with a 12 MiB layer behind a
//! bandwidth-limited proxy (4 MiB/s, so the pull takes seconds), `berth sites create`
//! run without a terminal. Its plain progress lines must show the agent's pull byte
//! counts (reported to the controller, stored, served in the REST instance view)
//! growing towards the image's size.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{require_root, Registry, Unit};

const BIG: usize = 12 << 20;
const RATE: usize = 4 << 20;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The demo image plus a layer of 12 MiB of random bytes, pushed as `big/app:1`.
fn push_big_image(reg: &Registry) -> String {
    let demo = reg.push_demo_image("big/base:1", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let bundle = tmp.path().join("bundle");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{demo}"))
        .arg(format!("oci:{}:base", layout.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:base", layout.display()))
        .arg(&bundle));
    let mut data = vec![0u8; BIG];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(bundle.join("rootfs/big.bin"), &data).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:big", layout.display()))
        .arg(&bundle));
    let image = format!("{}/big/app:1", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:big", layout.display()))
        .arg(format!("docker://{image}")));
    image
}

/// A TCP proxy to `upstream` that forwards the answers at most `RATE` bytes a second.
fn slow_proxy(upstream: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(client) = c else { continue };
            let Ok(server) = TcpStream::connect(upstream) else {
                continue;
            };
            let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c1, &mut s1);
                let _ = s1.shutdown(Shutdown::Write);
            });
            let (mut s2, mut c2) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let start = Instant::now();
                let mut sent = 0usize;
                while let Ok(n) = s2.read(&mut buf) {
                    if n == 0 || c2.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                    let due = Duration::from_secs_f64(sent as f64 / RATE as f64);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let _ = c2.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn create_shows_growing_pull_bytes_without_a_terminal() {
    require_root();
    let reg = Registry::start();
    let image = push_big_image(&reg);
    let proxy = slow_proxy(reg.addr);
    let via_proxy = image.replacen(&reg.addr.to_string(), &proxy.to_string(), 1);

    let u = Unit::up(6.0);
    let out = u.berth(&["sites", "create", "big", "--image", &via_proxy]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("berth sites create said:\n{stderr}");
    assert!(out.status.success(), "{stderr}\n{}", u.daemon_logs());

    // "big-xxxx=pulling DONE/TOTAL bytes (P%)"
    let mut seen: Vec<(u64, u64)> = Vec::new();
    for line in stderr.lines() {
        if let Some(rest) = line.split("=pulling ").nth(1) {
            let nums = rest.split(' ').next().unwrap();
            let (d, t) = nums.split_once('/').unwrap();
            seen.push((d.parse().unwrap(), t.parse().unwrap()));
        }
    }
    assert!(seen.len() >= 2, "fewer than two progress lines: {seen:?}");
    let total = seen[0].1;
    assert!(
        total >= BIG as u64 / 2,
        "total {total} is not the image's size"
    );
    assert!(seen.iter().all(|(_, t)| *t == total), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "not growing: {seen:?}"
    );
    assert!(seen.last().unwrap().0 > seen[0].0, "not growing: {seen:?}");
    assert!(u.get("big", "/").unwrap().status().is_success());
    u.berth_ok(&["sites", "delete", "big"]);
}
