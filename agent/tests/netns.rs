//! Root integration test of the network namespace helper: create a namespace, check `lo`
//! is up by connecting (through `connect_in`) to a listener bound inside it, remove it.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use berth_agent::netns::{self, HostNetns};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos()
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root (sudo cargo test -p berth-agent)"
    );
}

#[test]
fn create_connect_remove() {
    require_root();
    let host = HostNetns::open().expect("open own netns");
    let name = unique("berth-test-ns");
    let path = netns::create(&name).expect("create netns");
    assert_eq!(path, netns::path_of(&name));
    assert!(path.exists());

    // A second create of the same name fails and leaves the first alone.
    assert!(matches!(
        netns::create(&name),
        Err(netns::NetnsError::Exists(_))
    ));

    // Listener inside the namespace, on its loopback (only works if lo is up).
    let (tx, rx) = std::sync::mpsc::channel();
    let server = netns::spawn_in(&path, move || {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind inside netns (is lo up?)");
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().expect("accept inside netns");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"pong").unwrap();
    })
    .expect("spawn thread inside netns");
    let addr = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("listener address");

    let mut s = netns::connect_in(&host, &path, addr, Duration::from_secs(2))
        .expect("connect inside netns");
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    server.join().unwrap();

    // The calling thread is back in the host namespace.
    let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let init = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(own, init, "thread did not return to the agent's namespace");

    netns::remove(&path).expect("remove netns");
    assert!(!path.exists(), "{} still exists", path.display());
    // Removing again is fine.
    netns::remove(&path).expect("remove twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_connect_and_missing_namespace() {
    require_root();
    let host = std::sync::Arc::new(HostNetns::open().expect("open own netns"));
    let name = unique("berth-test-ns-async");
    let path = netns::create(&name).expect("create netns");
    let (tx, rx) = std::sync::mpsc::channel();
    let server = netns::spawn_in(&path, move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"hi").unwrap();
    })
    .unwrap();
    let addr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut stream =
        netns::connect_in_async(host.clone(), path.clone(), addr, Duration::from_secs(2))
            .await
            .expect("async connect inside netns");
    let mut buf = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf)
        .await
        .unwrap();
    assert_eq!(&buf, b"hi");
    server.join().unwrap();

    // Nothing listens on another port: connection refused, not a hang.
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
    let err = netns::connect_in_async(host.clone(), path.clone(), closed, Duration::from_secs(2))
        .await
        .expect_err("nothing listens on port 1 inside the namespace");
    assert!(matches!(err, netns::ConnectError::Connect(_)), "{err}");

    netns::remove(&path).unwrap();
    let err = netns::connect_in_async(host, path.clone(), addr, Duration::from_secs(1))
        .await
        .expect_err("namespace is gone");
    assert!(matches!(err, netns::ConnectError::Netns(_)), "{err}");
}
