//! The stack images (stacks/static/build.sh, stacks/python/build.sh) run as real Berth
//! sites: built, pushed to a real registry, created with `berth sites create`, serving
//! their placeholder page and then what is written into the site's
//! `/home/site/wwwroot` on the host's mount of its volume.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_tests::{require_root, wait_for, workspace_root, Registry, Unit};

/// The host directory where the site's `/home` is mounted: the one volume mount under
/// `<state>/agent/volumes` holding `site/wwwroot`.
fn wwwroot(u: &Unit) -> Option<PathBuf> {
    let vols = u.state_dir().join("agent/volumes");
    std::fs::read_dir(vols)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site/wwwroot"))
        .find(|p| p.is_dir())
}

/// Builds `stacks/<stack>/build.sh` as `stacks/<stack>:<tag>`, runs it as site `site`
/// in a new unit, checks the placeholder page says `placeholder`; returns the unit
/// (keep it, and the registry, alive) and the host directory of its wwwroot.
fn stack_site(
    reg: &Registry,
    stack: &str,
    tag: &str,
    site: &str,
    placeholder: &str,
) -> (Unit, PathBuf) {
    let script = format!("stacks/{stack}/build.sh");
    let out = Command::new(workspace_root().join(&script))
        .arg(format!("stacks/{stack}:{tag}"))
        .arg(reg.addr.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("{}/stacks/{stack}:{tag}", reg.addr);
    let u = Unit::up(6.0);
    u.berth_ok(&["sites", "create", site, "--image", &image]);
    let page = u.get(site, "/").unwrap().text().unwrap();
    assert!(page.contains(placeholder), "placeholder page: {page}");
    let mut root = None;
    wait_for(
        Duration::from_secs(10),
        "the site's wwwroot on the host",
        || {
            root = wwwroot(&u);
            root.is_some()
        },
    );
    (u, root.unwrap())
}

#[test]
fn static_stack_serves_home_site_wwwroot() {
    require_root();
    let reg = Registry::start();
    let (u, root) = stack_site(&reg, "static", "1", "web", "berth static stack");
    std::fs::write(root.join("hello.txt"), "hello from /home\n").unwrap();
    let r = u.get("web", "/hello.txt").unwrap();
    assert!(r.status().is_success(), "GET /hello.txt: {}", r.status());
    assert_eq!(r.text().unwrap(), "hello from /home\n");
    u.berth_ok(&["sites", "delete", "web"]);
}

/// The `python` stack (stacks/python/build.sh: debootstrap minbase + Debian's python3,
/// about 2 minutes to build) as a real Berth site: its placeholder page from
/// `python3 -m http.server`, then an `app.py` written into `/home/site/wwwroot` and run
/// by a new instance on `$PORT`.
#[test]
fn python_stack_serves_placeholder_then_app_py() {
    require_root();
    let reg = Registry::start();
    let (u, root) = stack_site(&reg, "python", "3", "py", "berth python stack");
    std::fs::write(
        root.join("app.py"),
        "import http.server, os\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(200); self.end_headers(); self.wfile.write(b'app.py on berth\\n')\n\
         http.server.HTTPServer(('', int(os.environ['PORT'])), H).serve_forever()\n",
    )
    .unwrap();
    // A new instance runs the app; the old one keeps the placeholder until it goes.
    u.berth_ok(&["scale", "py", "0"]);
    u.berth_ok(&["scale", "py", "1"]);
    let r = u.get("py", "/").unwrap();
    assert!(r.status().is_success(), "GET /: {}", r.status());
    assert_eq!(r.text().unwrap(), "app.py on berth\n");
    u.berth_ok(&["sites", "delete", "py"]);
}
