//! `berth up`: a whole scale unit on one machine with embedded defaults.
//!
//! Starts `berth-controller`, `berth-fsd serve`, `berth-sandboxd`, `berth-agent` and
//! `berth-frontend` as separate processes (found next to the `berth` binary), each
//! waited for until it answers, with its output in `<state>/logs/<daemon>.log`. It
//! supervises them: a daemon that dies is restarted after `restart_delay` (doubling
//! on repeated crashes) — so `kill -9` of the controller shows that sites keep
//! serving while it is away. On SIGINT/SIGTERM it stops them front to back (front end
//! first, controller last) so the agent can stop its sandboxes cleanly.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

/// Everything `berth up` needs to know; every field has an embedded default.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub state_dir: PathBuf,
    /// Controller REST port; every other port is derived from it (see ARCHITECTURE.md).
    pub port_base: u16,
    pub domain: String,
    pub worker_name: Option<String>,
    pub restart_delay: Duration,
    pub bin_dir: PathBuf,
    /// Join an existing Berth as one more web worker instead of starting a whole unit.
    pub join: Option<Join>,
    /// CA certificates (PEM) for HTTPS registries: the controller's and agent's --registry-ca.
    pub registry_ca: Option<PathBuf>,
    /// The agent's --image-budget (e.g. `10GiB`); its default when `None`.
    pub image_budget: Option<String>,
}

/// Where a joining worker finds the rest of its unit.
#[derive(Debug, Clone)]
pub struct Join {
    /// Controller gRPC URL, e.g. `http://10.0.0.1:7701`.
    pub controller: String,
    /// File server URL for `/home` mounts, e.g. `http://10.0.0.1:7702`.
    pub fsd: String,
}

/// The file server URL of a unit whose controller gRPC is at `controller`: same host,
/// the fsd port at the same offset from the gRPC port as in [`berth_api::ports`].
pub fn default_fsd_url(controller: &str) -> Result<String> {
    use berth_api::ports as p;
    let rest = controller.strip_prefix("http://").with_context(|| {
        format!("--join {controller:?}: expected http://HOST:PORT of the controller's gRPC")
    })?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .with_context(|| {
            format!("--join {controller:?}: expected http://HOST:PORT (the port is missing)")
        })?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--join {controller:?}: {port:?} is not a port number"))?;
    let fsd = u32::from(port) + u32::from(p::FSD) - u32::from(p::CONTROLLER_GRPC);
    let fsd = u16::try_from(fsd)
        .with_context(|| format!("--join {controller:?}: no fsd port follows it; give --fsd"))?;
    Ok(format!("http://{host}:{fsd}"))
}

/// Addresses of one unit, all on loopback.
#[derive(Debug, Clone)]
pub struct Ports {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub fsd: SocketAddr,
    pub ingress: SocketAddr,
    pub agent_metrics: SocketAddr,
    pub sandboxd_metrics: SocketAddr,
    pub fsd_metrics: SocketAddr,
    pub frontend_metrics: SocketAddr,
    pub http: SocketAddr,
}

impl Ports {
    pub fn from_base(base: u16) -> Result<Self> {
        use berth_api::ports as p;
        let at = |default: u16| -> Result<SocketAddr> {
            let port = u32::from(base) + u32::from(default) - u32::from(p::CONTROLLER_API);
            let port = u16::try_from(port)
                .context("--port-base leaves no room for the other ports: pick one below 65000")?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        Ok(Self {
            api: at(p::CONTROLLER_API)?,
            grpc: at(p::CONTROLLER_GRPC)?,
            fsd: at(p::FSD)?,
            ingress: at(p::AGENT_INGRESS)?,
            agent_metrics: at(p::AGENT_METRICS)?,
            sandboxd_metrics: at(p::SANDBOXD_METRICS)?,
            fsd_metrics: at(p::FSD_METRICS)?,
            frontend_metrics: at(p::FRONTEND_METRICS)?,
            http: at(p::FRONTEND_HTTP)?,
        })
    }
}

/// What a daemon must show before the next one starts.
enum Ready {
    Tcp(SocketAddr),
    Socket(PathBuf),
}

struct Daemon {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
    ready: Ready,
    log: PathBuf,
    child: Option<Child>,
    crashes: u32,
    started_at: Instant,
    restart_at: Option<Instant>,
}

impl Daemon {
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening log file {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .kill_on_drop(false)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} ({}): build the workspace first (`cargo build`), the daemons must sit next to `berth`",
                    self.name,
                    self.bin.display()
                )
            })?;
        self.child = Some(child);
        self.started_at = Instant::now();
        Ok(())
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = match &self.ready {
                Ready::Tcp(a) => TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok(),
                Ready::Socket(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            };
            if ok {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "{} exited during start ({status}); see {}",
                        self.name,
                        self.log.display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not come up within {}s; see {}",
                    self.name,
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            eprintln!(
                "{} did not stop within {}s: killing it",
                self.name,
                grace.as_secs()
            );
            let _ = child.kill().await;
        }
    }
}

fn bin(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

/// Runs a unit until SIGINT/SIGTERM.
pub async fn run(cfg: UpConfig) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("berth up needs root (it creates namespaces, cgroups and FUSE mounts): run it with sudo");
    }
    let ports = Ports::from_base(cfg.port_base)?;
    let st = &cfg.state_dir;
    if let Some(join) = &cfg.join {
        return run_worker(&cfg, join, &ports).await;
    }
    for d in ["controller", "fsd", "objects", "sandboxd", "agent", "logs"] {
        std::fs::create_dir_all(st.join(d))
            .with_context(|| format!("creating {}", st.join(d).display()))?;
    }
    let logs = st.join("logs");
    let ctl_grpc = format!("http://{}", ports.grpc);
    let worker = worker_name(&cfg);
    let http_port = ports.http.port();
    let public = if http_port == 80 {
        "http://{site}.".to_string() + &cfg.domain
    } else {
        format!("http://{{site}}.{}:{http_port}", cfg.domain)
    };
    let mk = |name, exe, args, ready| daemon(&cfg.bin_dir, &logs, name, exe, args, ready);
    let [sandboxd, agent] = worker_daemons(
        &cfg,
        &ports,
        &ctl_grpc,
        &format!("http://{}", ports.fsd),
        &worker,
    );
    let mut daemons = [
        mk(
            "controller",
            "berth-controller",
            vec![
                s("--listen"),
                s(ports.api),
                s("--grpc-listen"),
                s(ports.grpc),
                s("--state-dir"),
                st.join("controller").display().to_string(),
                s("--domain"),
                cfg.domain.clone(),
                s("--public-url-base"),
                public.clone(),
            ]
            .into_iter()
            .chain(registry_ca_args(&cfg))
            .collect(),
            Ready::Tcp(ports.api),
        ),
        mk(
            "fsd",
            "berth-fsd",
            vec![
                s("serve"),
                s("--listen"),
                s(ports.fsd),
                s("--store-dir"),
                st.join("objects").display().to_string(),
                s("--state-dir"),
                st.join("fsd").display().to_string(),
                s("--metrics-listen"),
                s(ports.fsd_metrics),
            ],
            Ready::Tcp(ports.fsd),
        ),
        sandboxd,
        agent,
        mk(
            "frontend",
            "berth-frontend",
            vec![
                s("--controller"),
                ctl_grpc,
                s("--listen"),
                s(ports.http),
                s("--metrics-listen"),
                s(ports.frontend_metrics),
            ],
            Ready::Tcp(ports.http),
        ),
    ];

    run_daemons(&mut daemons, cfg.restart_delay, |elapsed| {
        println!(
            "Berth is up in {:.1}s (state in {})",
            elapsed.as_secs_f64(),
            st.display()
        );
        println!(
            "  API        http://{}   (token: {})",
            ports.api,
            st.join("controller/token").display()
        );
        println!("  front end  {}", public.replace("{site}", "<site>"));
        println!("  worker     {worker} (ingress {})", ports.ingress);
        println!("  logs       {}", logs.display());
        println!("  metrics    controller http://{}/metrics, agent http://{}/metrics, frontend http://{}/metrics, sandboxd http://{}/metrics, fsd http://{}/metrics",
            ports.api, ports.agent_metrics, ports.frontend_metrics, ports.sandboxd_metrics, ports.fsd_metrics);
        println!("Create a site:  berth sites create hello --image 127.0.0.1:5000/hello:1");
        println!("Press Ctrl-C to stop.");

    })
    .await
}

fn daemon(
    bin_dir: &Path,
    logs: &Path,
    name: &'static str,
    exe: &str,
    args: Vec<String>,
    ready: Ready,
) -> Daemon {
    Daemon {
        name,
        bin: bin(bin_dir, exe),
        args,
        ready,
        log: logs.join(format!("{name}.log")),
        child: None,
        crashes: 0,
        started_at: Instant::now(),
        restart_at: None,
    }
}

/// sandboxd and the agent of one web worker, talking to the controller and the file
/// server at the given URLs.
fn worker_daemons(
    cfg: &UpConfig,
    ports: &Ports,
    controller: &str,
    fsd: &str,
    worker: &str,
) -> [Daemon; 2] {
    let st = &cfg.state_dir;
    let logs = st.join("logs");
    let sock = st.join("sandboxd").join("sandboxd.sock");
    let mk = |name, exe, args, ready| daemon(&cfg.bin_dir, &logs, name, exe, args, ready);
    [
        mk(
            "sandboxd",
            "berth-sandboxd",
            vec![
                s("--socket"),
                sock.display().to_string(),
                s("--state-dir"),
                st.join("sandboxd").display().to_string(),
                s("--metrics-listen"),
                s(ports.sandboxd_metrics),
            ],
            Ready::Socket(sock.clone()),
        ),
        mk(
            "agent",
            "berth-agent",
            vec![
                s("--controller"),
                s(controller),
                s("--sandboxd-socket"),
                sock.display().to_string(),
                s("--fsd"),
                s(fsd),
                s("--fsd-bin"),
                bin(&cfg.bin_dir, "berth-fsd").display().to_string(),
                s("--ingress-listen"),
                s(ports.ingress),
                s("--metrics-listen"),
                s(ports.agent_metrics),
                s("--state-dir"),
                st.join("agent").display().to_string(),
                s("--name"),
                s(worker),
            ]
            .into_iter()
            .chain(registry_ca_args(cfg))
            .chain(
                cfg.image_budget
                    .iter()
                    .flat_map(|b| [s("--image-budget"), b.clone()]),
            )
            .collect(),
            Ready::Tcp(ports.ingress),
        ),
    ]
}

/// `berth up --join`: only this machine's web worker (sandboxd + agent), registered
/// with the controller of an existing unit.
async fn run_worker(cfg: &UpConfig, join: &Join, ports: &Ports) -> Result<()> {
    let st = &cfg.state_dir;
    for d in ["sandboxd", "agent", "logs"] {
        std::fs::create_dir_all(st.join(d))
            .with_context(|| format!("creating {}", st.join(d).display()))?;
    }
    let worker = worker_name(cfg);
    let mut daemons = worker_daemons(cfg, ports, &join.controller, &join.fsd, &worker);
    run_daemons(&mut daemons, cfg.restart_delay, |elapsed| {
        println!(
            "Berth worker {worker} joined {} in {:.1}s (state in {})",
            join.controller,
            elapsed.as_secs_f64(),
            st.display()
        );
        println!("  ingress    {}", ports.ingress);
        println!("  /home      file server {}", join.fsd);
        println!("  logs       {}", st.join("logs").display());
        println!(
            "  metrics    agent http://{}/metrics, sandboxd http://{}/metrics",
            ports.agent_metrics, ports.sandboxd_metrics
        );
        println!("Press Ctrl-C to stop.");
    })
    .await
}

fn worker_name(cfg: &UpConfig) -> String {
    cfg.worker_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "worker-1".into())
    })
}

/// Starts `daemons` in order (each waited for until it answers; on a failure the ones
/// started are stopped again), calls `banner` with the time it took, then supervises
/// them until SIGINT/SIGTERM and stops them in reverse order.
async fn run_daemons(
    daemons: &mut [Daemon],
    restart_delay: Duration,
    banner: impl FnOnce(Duration),
) -> Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let started = Instant::now();
    for i in 0..daemons.len() {
        let d = &mut daemons[i];
        let r = match d.spawn() {
            Ok(()) => d.wait_ready(Duration::from_secs(30)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            for d in daemons[..=i].iter_mut().rev() {
                d.stop(Duration::from_secs(20)).await;
            }
            return Err(e.context("berth up failed; every daemon it had started was stopped"));
        }
    }
    banner(started.elapsed());

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        for d in daemons.iter_mut() {
            supervise(d, restart_delay);
        }
    }
    println!("Stopping Berth...");
    for d in daemons.iter_mut().rev() {
        d.stop(Duration::from_secs(40)).await;
        println!("  stopped {}", d.name);
    }
    Ok(())
}

/// Notices a dead daemon and restarts it once its back-off has passed.
fn supervise(d: &mut Daemon, base_delay: Duration) {
    if let Some(c) = d.child.as_mut() {
        match c.try_wait() {
            Ok(None) => {
                // Up for a minute: earlier crashes no longer lengthen the back-off.
                if d.crashes > 0 && d.started_at.elapsed() > Duration::from_secs(60) {
                    d.crashes = 0;
                }
                return;
            }
            Ok(Some(status)) => {
                d.child = None;
                d.crashes += 1;
                let delay = base_delay * 2u32.saturating_pow(d.crashes.min(5) - 1);
                let delay = delay.min(Duration::from_secs(30));
                eprintln!(
                    "{} exited ({status}); restarting it in {:.1}s (log: {})",
                    d.name,
                    delay.as_secs_f64(),
                    d.log.display()
                );
                d.restart_at = Some(Instant::now() + delay);
            }
            Err(e) => {
                eprintln!("checking {}: {e}", d.name);
                return;
            }
        }
    }
    if let Some(at) = d.restart_at {
        if Instant::now() >= at {
            d.restart_at = None;
            match d.spawn() {
                Ok(()) => eprintln!("{} restarted", d.name),
                Err(e) => {
                    eprintln!("restarting {}: {e:#}", d.name);
                    d.restart_at = Some(Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }
}

/// `--registry-ca FILE` for the controller and the agent, when `berth up` got one.
fn registry_ca_args(cfg: &UpConfig) -> Vec<String> {
    cfg.registry_ca
        .iter()
        .flat_map(|p| ["--registry-ca".to_string(), p.display().to_string()])
        .collect()
}
