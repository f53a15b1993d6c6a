//! Root integration test of sandbox egress on the real kernel: two sandbox namespaces
//! attached by [`Network`], and a simulated external service in a namespace of its own
//! (`berth-ext-*`, 10.241.x.2 behind a veth from the host). From inside a sandbox:
//! the service is reachable through NAT; host listeners (on the veth's host address, on
//! the worker's other addresses, on loopback) and the other sandbox are not; the
//! outbound connection limit rejects the connection over the limit and counts it.
//! After detach no link, nftables object or address claim remains.
//!
//! Traffic only goes to addresses inside namespaces this test creates, or to the host's
//! own addresses (which must refuse it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_agent::netns;
use berth_agent::network::{link, nft, veth_name, Network, NetworkCollector, NetworkConfig};

const LIMIT: u32 = 20;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates namespaces, veths and nftables rules and must run as root (sudo cargo test -p berth-agent)"
    );
}

fn rand6() -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| A[rand::random::<usize>() % A.len()] as char)
        .collect()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The simulated external service: its own namespace and a veth to the host.
struct External {
    ns: PathBuf,
    host_if: String,
    addr: Ipv4Addr,
    host_addr: Ipv4Addr,
}

impl External {
    fn new() -> Self {
        let tag = rand6();
        let name = format!("berth-ext-{tag}");
        let ns = netns::create(&name).expect("create external namespace");
        let host_if = format!("bx{tag}");
        let octet = 1 + rand::random::<u8>() % 250;
        let host_addr = Ipv4Addr::new(10, 241, octet, 1);
        let addr = Ipv4Addr::new(10, 241, octet, 2);
        let me = Self {
            ns,
            host_if: host_if.clone(),
            addr,
            host_addr,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        me
    }

    /// A TCP echo server in the external namespace; returns its address.
    fn echo_server(&self) -> SocketAddr {
        let bind = SocketAddr::from((self.addr, 0));
        let (tx, rx) = std::sync::mpsc::channel();
        netns::spawn_in(&self.ns, move || {
            let l = TcpListener::bind(bind).expect("bind echo server in the external namespace");
            tx.send(l.local_addr().unwrap()).unwrap();
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        })
        .expect("thread in the external namespace");
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = netns::remove(&self.ns);
    }
}

/// A sandbox-like namespace attached to the network; detached and removed on drop.
struct Sandbox {
    id: String,
    ns: PathBuf,
    net: Arc<Network>,
}

impl Sandbox {
    fn new(net: &Arc<Network>) -> Self {
        let id = format!("nettest-{}", rand6());
        let name = format!("berth-{id}");
        let ns = netns::create(&name).expect("create sandbox namespace");
        let sb = Self {
            id: id.clone(),
            ns,
            net: net.clone(),
        };
        net.attach(&id, &name).expect("attach");
        sb
    }

    /// Runs `f` on a thread inside the sandbox's namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        netns::spawn_in(&self.ns, f)
            .expect("thread in the sandbox namespace")
            .join()
            .expect("sandbox thread panicked")
    }

    fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        self.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(1500)))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.net.detach(&self.id);
        let _ = netns::remove(&self.ns);
    }
}

fn echo(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// A host listener on all addresses, answering anything that gets through.
fn host_listener() -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = (&s).write_all(b"host");
        }
    });
    port
}

fn host_addresses() -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _ = f.by_ref().find(|w| *w == "inet")?;
            f.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn egress_isolation_limit_and_cleanup() {
    require_root();
    let net = Arc::new(
        Network::init(NetworkConfig {
            outbound_connection_limit: LIMIT,
            ..Default::default()
        })
        .expect("network init"),
    );
    let ext = External::new();
    let service = ext.echo_server();
    let a = Sandbox::new(&net);
    let b = Sandbox::new(&net);
    let att_a = net.attachment(&a.id).unwrap();
    let att_b = net.attachment(&b.id).unwrap();
    assert_ne!(att_a.block, att_b.block, "two sandboxes, two address pairs");
    assert!(link::exists(&att_a.veth));

    // Egress + NAT: the external service answers, and sees the host's address, not the
    // sandbox's.
    let s = a
        .connect(service)
        .expect("sandbox reaches the external service");
    assert_eq!(echo(s), "ping");
    let (tx, rx) = std::sync::mpsc::channel();
    let ext_addr = ext.addr;
    netns::spawn_in(&ext.ns, move || {
        let l = TcpListener::bind((ext_addr, 0)).unwrap();
        tx.send(l.local_addr().unwrap()).unwrap();
        let (_, peer) = l.accept().unwrap();
        tx.send(peer).unwrap();
    })
    .unwrap();
    let to = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let _flow = a
        .connect(to)
        .expect("sandbox reaches a second service port");
    let peer = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(ext.host_addr),
        "the service sees the worker's address (masquerade), not the sandbox's"
    );

    // The host itself: a listener on every address of the worker is unreachable from the
    // sandbox, through the veth's host end, the worker's other addresses, and loopback.
    let port = host_listener();
    let mut targets: Vec<Ipv4Addr> = vec![att_a.gateway(), att_b.gateway(), ext.host_addr];
    targets.extend(host_addresses().into_iter().filter(|a| !a.is_loopback()));
    targets.push(Ipv4Addr::LOCALHOST);
    for t in &targets {
        let to = SocketAddr::V4(SocketAddrV4::new(*t, port));
        assert!(
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok()
                || t.is_loopback()
                || *t == att_a.gateway()
                || *t == att_b.gateway()
                || *t == ext.host_addr,
            "sanity: the host listener answers on {to} from the host"
        );
        let r = a.connect(to);
        assert!(r.is_err(), "sandbox must not reach the host at {to}");
    }

    // The other sandbox: a listener inside b on all its addresses is unreachable from a.
    let (tx, rx) = std::sync::mpsc::channel();
    netns::spawn_in(&b.ns, move || {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for s in l.incoming().flatten() {
            let _ = (&s).write_all(b"b");
        }
    })
    .unwrap();
    let b_port = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let to_b = SocketAddr::from((att_b.address(), b_port));
    assert!(
        b.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, b_port)))
            .is_ok(),
        "sanity: b's listener answers inside b"
    );
    assert!(
        a.connect(to_b).is_err(),
        "sandbox a must not reach b at {to_b}"
    );

    // The connection limit: LIMIT open flows pass, the next is rejected and counted.
    let held: Vec<TcpStream> = {
        let mut v = Vec::new();
        // a already holds open flows to the service (above); top up to exactly LIMIT.
        let open_now = net
            .stats()
            .unwrap()
            .into_iter()
            .find(|s| s.instance == a.id)
            .unwrap()
            .open;
        for i in open_now..u64::from(LIMIT) {
            v.push(
                a.connect(service)
                    .unwrap_or_else(|e| panic!("flow {} of {LIMIT} must pass: {e}", i + 1)),
            );
        }
        v
    };
    let over = a.connect(service);
    assert!(over.is_err(), "flow {} must be rejected", LIMIT + 1);
    let stats = net.stats().unwrap();
    let sa = stats.iter().find(|s| s.instance == a.id).unwrap();
    assert!(sa.rejected >= 1, "rejected flow counted: {sa:?}");
    assert!(sa.open >= u64::from(LIMIT), "open flows counted: {sa:?}");
    let sb = stats.iter().find(|s| s.instance == b.id).unwrap();
    assert_eq!(sb.rejected, 0, "b's counter is its own: {sb:?}");
    // b has its own budget.
    let s = b.connect(service).expect("b is not limited by a's flows");
    assert_eq!(echo(s), "ping");

    // The figures on /metrics.
    let mut metrics = berth_agent::metrics::Metrics::new();
    metrics.register_collector(Box::new(NetworkCollector(net.clone())));
    let text = metrics.encode();
    let want = format!(
        "berth_agent_outbound_connections_rejected_total{{instance=\"{}\"}} {}",
        a.id, sa.rejected
    );
    assert!(text.contains(&want), "metrics lack {want:?}:\n{text}");
    assert!(text.contains(&format!("berth_agent_outbound_connection_limit {LIMIT}")));
    assert!(text.contains(&format!(
        "berth_agent_outbound_connections{{instance=\"{}\"}}",
        a.id
    )));
    drop(held);

    // Removal: no link, no nftables object, no claim.
    let objects = nft::InstanceObjects::for_veth(&veth_name(&a.id));
    assert!(nft::instance_present(&objects).unwrap());
    net.detach(&a.id).unwrap();
    assert!(!link::exists(&att_a.veth), "veth {} left", att_a.veth);
    assert!(!nft::instance_present(&objects).unwrap());
    let claims = std::fs::read_dir(&net.config().claims_dir)
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_to_string(e.path()).is_ok_and(|c| c == a.id))
        .count();
    assert_eq!(claims, 0, "address claim of {} left", a.id);
    // Detach is idempotent.
    net.detach(&a.id).unwrap();
}

#[test]
fn attach_failure_leaves_nothing() {
    require_root();
    let net = Network::init(NetworkConfig::default()).expect("network init");
    let id = format!("nettest-{}", rand6());
    // No such namespace: the veth cannot be made.
    let err = net
        .attach(&id, &format!("berth-missing-{}", rand6()))
        .unwrap_err();
    assert!(err.to_string().contains("veth"), "{err}");
    assert!(!link::exists(&veth_name(&id)));
    let objects = nft::InstanceObjects::for_veth(&veth_name(&id));
    assert!(!nft::instance_present(&objects).unwrap());
    assert!(std::fs::read_dir(&net.config().claims_dir)
        .unwrap()
        .flatten()
        .all(|e| std::fs::read_to_string(e.path()).is_ok_and(|c| c != id)));
}
