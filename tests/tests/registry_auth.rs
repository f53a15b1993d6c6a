//! A site from a password-protected registry, through the product path: Debian's
//! docker-registry with `auth: htpasswd`, the demo image copied into it with skopeo,
//! `berth registry login <registry> -u … --password-stdin`, then `berth sites create`
//! serving the site. Without the login the create fails with a message that says to
//! log in, and leaves no site behind.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use berth_tests::{free_port_base, require_root, wait_for, Registry, Unit};

const USER: &str = "deployer";
const PASS: &str = "s3cret pass";

/// docker-registry with htpasswd auth on a free loopback port.
struct Protected {
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Protected {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_base(1);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let htpasswd = dir.path().join("htpasswd");
        // Cost 4 (the minimum) keeps each authenticated request cheap.
        std::fs::write(
            &htpasswd,
            format!("{USER}:{}\n", bcrypt::hash(PASS, 4).unwrap()),
        )
        .unwrap();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: berth-e2e\n    path: {}\n",
                dir.path().join("data").display(),
                htpasswd.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting docker-registry (apt-get install docker-registry)");
        let p = Self {
            addr,
            _dir: dir,
            child,
        };
        wait_for(Duration::from_secs(15), "the protected registry", || {
            reqwest::blocking::get(format!("http://{addr}/v2/"))
                .map(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED)
                .unwrap_or(false)
        });
        p
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `berth` against `u` with its own credentials directory and `stdin` as standard input.
fn berth(u: &Unit, config_dir: &std::path::Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(u.bin.join("berth"))
        .args(args)
        .env("BERTH_API", &u.api)
        .env("BERTH_TOKEN_FILE", u.state_dir().join("controller/token"))
        .env("BERTH_CONFIG_DIR", config_dir)
        .env("DOCKER_CONFIG", config_dir.join("docker"))
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_REGISTRY_AUTH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running berth");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn site_from_a_password_protected_registry() {
    require_root();
    let open = Registry::start();
    let src = open.push_demo_image("private/hello:1", &[]);
    let reg = Protected::start();
    let image = format!("{}/private/hello:1", reg.addr);
    let copy = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--dest-creds={USER}:{PASS}"))
        .arg(format!("docker://{src}"))
        .arg(format!("docker://{image}"))
        .output()
        .expect("running skopeo");
    assert!(copy.status.success(), "skopeo copy: {}", text(&copy));

    let u = Unit::up(6.0);
    let creds = tempfile::tempdir().unwrap();
    let cdir = creds.path();

    // No credentials: refused at create, with the command to run, and nothing created.
    let out = berth(
        &u,
        cdir,
        &["sites", "create", "priv", "--image", &image],
        "",
    );
    assert!(
        !out.status.success(),
        "create without login: {}",
        text(&out)
    );
    let msg = text(&out);
    eprintln!("create without login said: {msg}");
    assert!(
        msg.contains(&format!("berth registry login {}", reg.addr)),
        "{msg}"
    );
    let list = u.berth_ok(&["sites", "list", "-o", "json"]);
    assert!(!list.contains("\"priv\""), "no partial site: {list}");

    // A wrong password is refused by `berth registry login` and saves nothing.
    let out = berth(
        &u,
        cdir,
        &[
            "registry",
            "login",
            &reg.addr.to_string(),
            "-u",
            USER,
            "--password-stdin",
        ],
        "wrong\n",
    );
    assert!(
        !out.status.success(),
        "login with a wrong password: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("refused the credentials"),
        "{}",
        text(&out)
    );
    assert!(!cdir.join("auth.json").exists());

    // Login, then create: the saved credentials reach the controller and the agent.
    let out = berth(
        &u,
        cdir,
        &[
            "registry",
            "login",
            &reg.addr.to_string(),
            "-u",
            USER,
            "--password-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(out.status.success(), "login: {}", text(&out));
    assert!(text(&out).contains("Login succeeded"), "{}", text(&out));
    let out = berth(
        &u,
        cdir,
        &["sites", "create", "priv", "--image", &image],
        "",
    );
    assert!(
        out.status.success(),
        "create after login: {}\n{}",
        text(&out),
        u.daemon_logs()
    );
    let body = u.get("priv", "/").unwrap().text().unwrap();
    assert!(body.contains("site: priv"), "{body}");

    // Logout: a new site of the same image is refused again.
    let out = berth(&u, cdir, &["registry", "logout", &reg.addr.to_string()], "");
    assert!(out.status.success(), "logout: {}", text(&out));
    let out = berth(
        &u,
        cdir,
        &["sites", "create", "priv2", "--image", &image],
        "",
    );
    assert!(!out.status.success(), "create after logout: {}", text(&out));
    assert!(
        !u.berth_ok(&["sites", "list", "-o", "json"])
            .contains("\"priv2\""),
        "no partial site after a refused create"
    );
    u.berth_ok(&["sites", "delete", "priv"]);
}
