//! Helpers for the isolation suite (`tests/tests/isolation.rs`): the attacker image
//! (`scripts/build-attack-image.sh`, program `tests/isolation/attack.c`), running one
//! attack case through the front end and reading its verdict, and host-side bait: a
//! TCP listener with a banner and an abstract Unix socket that no sandbox may reach.
//!
//! Nothing here decides containment by itself: the attack program inside the sandbox
//! prints `RESULT: CONTAINED` or `RESULT: ESCAPED (n)` with its evidence, and the test
//! compares that with what it expects.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{workspace_root, Registry, Unit};

/// What one attack case reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Contained,
    Escaped,
    /// No verdict line: the request failed or the program died (text says how).
    Error(String),
}

/// The outcome of one case: verdict plus the program's whole output as evidence.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    pub output: String,
    pub elapsed: Duration,
}

impl Outcome {
    /// The `escaped:` lines, or the error, in one line for summaries.
    pub fn why(&self) -> String {
        match &self.verdict {
            Verdict::Error(e) => e.clone(),
            _ => {
                let lines: Vec<&str> = self
                    .output
                    .lines()
                    .filter_map(|l| l.strip_prefix("escaped: "))
                    .collect();
                lines.join("; ")
            }
        }
    }
}

/// Builds the attacker image and pushes it as `name_tag`; returns the full reference.
/// `extra`: more arguments for the script (`--workdir DIR`).
pub fn push_attack_image(reg: &Registry, name_tag: &str, extra: &[&str]) -> String {
    let out = Command::new(workspace_root().join("scripts/build-attack-image.sh"))
        .arg(name_tag)
        .arg(reg.addr.to_string())
        .args(extra)
        .output()
        .expect("running scripts/build-attack-image.sh");
    assert!(
        out.status.success(),
        "building/pushing the attack image {name_tag} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{}/{name_tag}", reg.addr)
}

/// GET `path_and_query` on `site` through the unit's front end, with a long timeout
/// (resource bombs take seconds). Returns the body or an error text.
pub fn get_text(u: &Unit, site: &str, path_and_query: &str) -> Result<String, String> {
    let host = format!("{site}.localhost");
    let client = reqwest::blocking::Client::builder()
        .resolve(&host, u.http)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("building client: {e}"))?;
    let r = client
        .get(format!("http://{host}:{}{path_and_query}", u.http.port()))
        .send()
        .map_err(|e| format!("GET {path_and_query} on {site}: {e}"))?;
    let status = r.status();
    let body = r.text().map_err(|e| format!("reading body: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {path_and_query} on {site}: {status}: {body}"));
    }
    Ok(body)
}

/// Runs attack program case `case` with `args` inside `site`'s sandbox.
pub fn run_case(u: &Unit, site: &str, case: &str, args: &[(String, String)]) -> Outcome {
    let mut q = format!("/cgi-bin/attack?{case}");
    for (k, v) in args {
        assert!(
            !v.contains('&') && !v.contains(' ') && !v.contains('#'),
            "attack argument {k}={v} must not hold '&', ' ' or '#'"
        );
        q.push('&');
        q.push_str(k);
        q.push('=');
        q.push_str(v);
    }
    let started = Instant::now();
    let res = get_text(u, site, &q);
    let elapsed = started.elapsed();
    match res {
        Err(e) => Outcome {
            verdict: Verdict::Error(e.clone()),
            output: e,
            elapsed,
        },
        Ok(output) => {
            let verdict = if output.contains("RESULT: CONTAINED") {
                Verdict::Contained
            } else if output.contains("RESULT: ESCAPED") {
                Verdict::Escaped
            } else {
                Verdict::Error(format!(
                    "no RESULT line (program died?): {}",
                    output.lines().last().unwrap_or("")
                ))
            };
            Outcome {
                verdict,
                output,
                elapsed,
            }
        }
    }
}

/// The host's own IPv4 addresses (every interface), from `ip -4 -o addr`.
pub fn host_ipv4_addrs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("running ip (apt-get install iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next().map(str::to_string)
        })
        .collect()
}

/// Host-side bait a sandbox must not reach: a TCP listener on `addr` that greets with
/// `banner` and counts connections, and an abstract Unix socket.
pub struct Bait {
    pub tcp: Vec<SocketAddr>,
    pub abstract_name: String,
    pub banner: String,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Bait {
    /// Listens on 127.0.0.1 and 0.0.0.0 (free ports) and on `@berth-bait-<random>`.
    pub fn start() -> Self {
        use std::os::linux::net::SocketAddrExt;
        let tag: u64 = rand::random();
        let banner = format!("BERTH-HOST-BAIT-{tag:x}");
        let abstract_name = format!("berth-bait-{tag:x}");
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tcp = Vec::new();
        for ip in ["127.0.0.1", "0.0.0.0"] {
            let l = TcpListener::bind((ip, 0)).expect("binding a bait listener");
            l.set_nonblocking(true).unwrap();
            tcp.push(l.local_addr().unwrap());
            let (stop, hits, banner) = (stop.clone(), hits.clone(), banner.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                            let _ = s.write_all(format!("{banner}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .expect("abstract socket address");
        let ul = UnixListener::bind_addr(&addr).expect("binding the abstract bait socket");
        ul.set_nonblocking(true).unwrap();
        {
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match ul.accept() {
                        Ok(_) => {
                            hits.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        }
        Self {
            tcp,
            abstract_name,
            banner,
            hits,
            stop,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Bait {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `q`-quantile (0..=1) of `samples` (nearest rank).
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    assert!(!samples.is_empty(), "quantile of no samples");
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&s, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&s[..1], 0.99), Duration::from_millis(1));
    }
}
