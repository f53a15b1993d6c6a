//! The `static` stack image (stacks/static/build.sh) run as a real Berth site: built,
//! pushed to a real registry, created with `berth sites create`, serving its placeholder
//! page and then a file written into the site's `/home/site/wwwroot` on the host's
//! mount of its volume.

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

#[test]
fn static_stack_serves_home_site_wwwroot() {
    require_root();
    let reg = Registry::start();
    let out = Command::new(workspace_root().join("stacks/static/build.sh"))
        .arg("stacks/static:1")
        .arg(reg.addr.to_string())
        .output()
        .expect("running stacks/static/build.sh");
    assert!(
        out.status.success(),
        "stacks/static/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("{}/stacks/static:1", reg.addr);
    let u = Unit::up(6.0);
    u.berth_ok(&["sites", "create", "web", "--image", &image]);

    let page = u.get("web", "/").unwrap().text().unwrap();
    assert!(
        page.contains("berth static stack"),
        "placeholder page: {page}"
    );

    let mut root = None;
    wait_for(
        Duration::from_secs(10),
        "the site's wwwroot on the host",
        || {
            root = wwwroot(&u);
            root.is_some()
        },
    );
    let root = root.unwrap();
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
    let out = Command::new(workspace_root().join("stacks/python/build.sh"))
        .arg("stacks/python:3")
        .arg(reg.addr.to_string())
        .output()
        .expect("running stacks/python/build.sh");
    assert!(
        out.status.success(),
        "stacks/python/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("{}/stacks/python:3", reg.addr);
    let u = Unit::up(6.0);
    u.berth_ok(&["sites", "create", "py", "--image", &image]);
    let page = u.get("py", "/").unwrap().text().unwrap();
    assert!(
        page.contains("berth python stack"),
        "placeholder page: {page}"
    );

    let mut root = None;
    wait_for(
        Duration::from_secs(10),
        "the site's wwwroot on the host",
        || {
            root = wwwroot(&u);
            root.is_some()
        },
    );
    std::fs::write(
        root.unwrap().join("app.py"),
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
