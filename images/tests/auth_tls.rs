//! Password-protected and HTTPS registries, for real: Debian's docker-registry with
//! `auth: htpasswd` (bcrypt entries made here) and with `http.tls` (a CA and a server
//! certificate for 127.0.0.1 made here with rcgen). The demo image is pushed to an open
//! registry and its storage copied under the protected ones, so the push tooling needs
//! no credentials or certificates.
//!
//! Checks: basic credentials pull; a wrong password fails saying to run
//! `berth registry login`; credentials from a docker-style `config.json` work; HTTPS pulls
//! with the CA file, fails without it naming `--registry-ca`; plain HTTP only when the
//! registry is marked insecure.

use std::fs;
use std::path::Path;
use std::process::Command;

use berth_images::{credentials, ClientError, ClientOptions, ImageStore, Reference, StoreError};

mod common;
use common::{need, Registry};

const USER: &str = "deployer";
const PASS: &str = "pa:ss w0rd";

/// Builds the demo image into an open registry; returns that registry (its data dir is
/// what the protected registries serve).
fn open_registry_with_demo() -> Registry {
    need("umoci", "umoci");
    need("skopeo", "skopeo");
    let reg = Registry::start_with("");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-image.sh");
    let out = Command::new("sh")
        .arg(&script)
        .args(["berth-test/private:1", &reg.addr])
        .output()
        .expect("running build-image.sh");
    assert!(
        out.status.success(),
        "build-image.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    reg
}

/// Starts a registry with `extra` config and the image data of `source`.
fn serve_copy(source: &Registry, extra: &str) -> Registry {
    let reg = Registry::start_with(extra);
    let st = Command::new("cp")
        .arg("-a")
        .arg(source.dir.path().join("data"))
        .arg(reg.dir.path())
        .status()
        .expect("cp");
    assert!(st.success(), "copying the registry data failed");
    reg
}

async fn pull(reg_addr: &str, opts: &ClientOptions) -> Result<(), StoreError> {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let r: Reference = format!("{reg_addr}/berth-test/private:1").parse().unwrap();
    store.pull(&r, opts, |_| {}).await.map(|img| {
        assert_eq!(img.snapshot_dirs.len(), 1);
        assert!(img.snapshot_dirs[0].join("bin/busybox").exists());
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_basic_auth_and_docker_config() {
    let open = open_registry_with_demo();
    let work = tempfile::tempdir().unwrap();
    // Cost 4 (bcrypt's minimum) keeps the registry's per-request check cheap.
    let entry = format!("{USER}:{}\n", bcrypt::hash(PASS, 4).unwrap());
    let htpasswd = work.path().join("htpasswd");
    fs::write(&htpasswd, entry).unwrap();
    let reg = serve_copy(
        &open,
        &format!(
            "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let insecure = |auth: Option<(&str, &str)>| ClientOptions {
        insecure: true,
        auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        ..Default::default()
    };

    // No credentials: refused, and the message says how to log in.
    let e = pull(&reg.addr, &insecure(None)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::Unauthorized { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("requires a user name and password"), "{msg}");
    assert!(
        msg.contains(&format!("berth registry login {}", reg.addr)),
        "{msg}"
    );

    // Wrong password: refused with the same advice.
    let e = pull(&reg.addr, &insecure(Some((USER, "wrong"))))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("credentials refused"), "{msg}");
    assert!(
        msg.contains(&format!("berth registry login {}", reg.addr)),
        "{msg}"
    );

    // Right password: pulls.
    pull(&reg.addr, &insecure(Some((USER, PASS))))
        .await
        .unwrap();

    // Docker's config.json (`auths` with base64 `auth`) as the source of credentials.
    use base64::Engine as _;
    let docker = work.path().join("config.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    fs::write(
        &docker,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}},"credsStore":"none"}}"#,
            reg.addr
        ),
    )
    .unwrap();
    let berth = work.path().join("berth-auth.json"); // absent: docker's file answers
    let found = credentials::lookup_in(&[&berth, &docker], &reg.addr)
        .unwrap()
        .expect("docker config.json entry");
    assert_eq!(found, (USER.to_string(), PASS.to_string()));
    pull(&reg.addr, &insecure(Some((&found.0, &found.1))))
        .await
        .unwrap();
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in `dir`:
/// returns (ca.pem, server.pem, server.key).
fn make_ca_and_server_cert(
    dir: &Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berth test registry CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    fs::write(&paths.0, ca.pem()).unwrap();
    fs::write(&paths.1, cert.pem()).unwrap();
    fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_registry_with_a_given_ca() {
    let open = open_registry_with_demo();
    let work = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_ca_and_server_cert(work.path());
    let reg = serve_copy(
        &open,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ),
    );
    let tls = |ca_file: Option<&Path>| ClientOptions {
        insecure: false,
        ca_file: ca_file.map(Path::to_path_buf),
        ..Default::default()
    };

    // With the CA file: pulls over HTTPS.
    pull(&reg.addr, &tls(Some(&ca))).await.unwrap();

    // Without it: the certificate is not trusted, and the error names the option.
    let e = pull(&reg.addr, &tls(None)).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Client(ClientError::Untrusted { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("certificate is not trusted"), "{msg}");
    assert!(msg.contains("--registry-ca"), "{msg}");

    // Marked insecure, the client speaks plain HTTP, which an HTTPS registry refuses:
    // insecure never means "HTTPS without verification".
    let plain = ClientOptions {
        insecure: true,
        ca_file: Some(ca.clone()),
        ..Default::default()
    };
    let e = pull(&reg.addr, &plain).await.unwrap_err();
    assert!(matches!(e, StoreError::Client(_)), "{e}");

    // The other way round: a plain-HTTP registry is only reached when marked insecure;
    // unmarked, the client insists on TLS and fails instead of falling back.
    let e = pull(&open.addr, &tls(Some(&ca))).await.unwrap_err();
    assert!(matches!(e, StoreError::Client(_)), "{e}");
    pull(
        &open.addr,
        &ClientOptions {
            insecure: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}
