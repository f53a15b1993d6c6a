//! Authentication flows against a tiny in-test registry speaking raw HTTP/1.1: a bearer
//! token challenge (realm on the same server) and plain basic auth.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::manifest::host_platform;

/// base64("u:p")
const BASIC_UP: &str = "basic dTpw";
const TOKEN: &str = "tok-123";

struct Fake {
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn fake() -> Fake {
    let (_, arch) = host_platform();
    let config = serde_json::to_vec(&serde_json::json!({
        "os": "linux", "architecture": arch,
        "config": {"Cmd": ["/bin/app"]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": {"mediaType": media_types::OCI_CONFIG,
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    Fake { config, manifest }
}

fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn route(addr: SocketAddr, fake: &Fake, path: &str, auth: Option<&str>) -> Vec<u8> {
    let unauthorized = |challenge: String| {
        response(
            "401 Unauthorized",
            &[("www-authenticate", challenge)],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
    };
    let (repo, rest) = match path.strip_prefix("/v2/") {
        Some(p) => p.split_once('/').unwrap_or((p, "")),
        None if path.starts_with("/token?") => {
            let scope_ok =
                path.contains("scope=repository%3Abearer%3Apull") && path.contains("service=fake");
            return if auth == Some(BASIC_UP) && scope_ok {
                response(
                    "200 OK",
                    &[],
                    format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes(),
                )
            } else {
                response("401 Unauthorized", &[], b"bad login")
            };
        }
        None => return response("404 Not Found", &[], b""),
    };
    let allowed = match repo {
        "bearer" => auth == Some(&format!("bearer {TOKEN}")),
        "basic" => auth == Some(BASIC_UP),
        _ => true,
    };
    if !allowed {
        return unauthorized(match repo {
            "bearer" => format!(
                r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:bearer:pull""#
            ),
            _ => r#"Basic realm="fake""#.to_string(),
        });
    }
    if rest.starts_with("manifests/") {
        response(
            "200 OK",
            &[("content-type", media_types::OCI_MANIFEST.to_string())],
            &fake.manifest,
        )
    } else if rest.starts_with("blobs/") {
        response("200 OK", &[], &fake.config)
    } else {
        response("404 Not Found", &[], b"")
    }
}

async fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let fake = fake();
        // Bounded: the tests make a handful of requests.
        for _ in 0..64 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let auth = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization")
                        .then(|| v.trim().to_string())
                })
                .map(|v| {
                    let (scheme, rest) = v.split_once(' ').unwrap_or((&v, ""));
                    format!("{} {rest}", scheme.to_ascii_lowercase())
                });
            let resp = route(addr, &fake, &path, auth.as_deref());
            let _ = sock.write_all(&resp).await;
            let _ = sock.shutdown().await;
        }
    });
    addr
}

fn client(auth: Option<(&str, &str)>) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        insecure: true,
        auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        ca_file: None,
    })
    .unwrap()
}

#[tokio::test]
async fn bearer_and_basic_auth() {
    let addr = serve().await;
    for repo in ["open", "bearer", "basic"] {
        let r: Reference = format!("{addr}/{repo}:1").parse().unwrap();
        let ok = client(Some(("u", "p"))).resolve(&r).await;
        let ok = ok.unwrap_or_else(|e| panic!("{repo}: {e}"));
        assert_eq!(ok.config.command(), Some(vec!["/bin/app".to_string()]));

        let wrong = client(Some(("u", "wrong"))).resolve(&r).await;
        let anonymous = client(None).resolve(&r).await;
        if repo == "open" {
            assert!(wrong.is_ok() && anonymous.is_ok());
        } else {
            for e in [wrong.unwrap_err(), anonymous.unwrap_err()] {
                assert!(matches!(e, ClientError::Unauthorized { .. }), "{repo}: {e}");
                assert!(e.to_string().contains("not authorized to pull"), "{e}");
            }
        }
    }
}
