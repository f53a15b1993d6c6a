//! Retries and resumed downloads against a tiny in-test HTTP server that misbehaves on
//! purpose: it cuts a blob off half way, answers 503, or ignores `Range`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the server does with the n-th request (0-based) for the blob.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// 200 with the full content-length, but only the first half of the body, then close.
    CutHalf,
    /// 503 Service Unavailable.
    Unavailable,
    /// Honour `Range` with 206 (or 200 when there is none).
    Serve,
    /// Always 200 with the whole body, ignoring `Range`.
    IgnoreRange,
}

struct Server {
    addr: SocketAddr,
    /// The `Range` header of every request, in order.
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

async fn serve(blob: Vec<u8>, acts: Vec<Act>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    tokio::spawn(async move {
        for n in 0..32 {
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
            let range = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("range")
                    .then(|| v.trim().to_string())
            });
            seen.lock().unwrap().push(range.clone());
            let act = acts.get(n).copied().unwrap_or(Act::Serve);
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let total = blob.len();
            let out: Vec<u8> = match (act, start) {
                (Act::CutHalf, _) => {
                    let mut o = format!(
                        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {total}\r\n\r\n"
                    )
                    .into_bytes();
                    o.extend_from_slice(&blob[..total / 2]);
                    o
                }
                (Act::Unavailable, _) => b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_vec(),
                (Act::Serve, Some(s)) if s < total => {
                    let mut o = format!(
                        "HTTP/1.1 206 Partial Content\r\nconnection: close\r\ncontent-length: {}\r\ncontent-range: bytes {s}-{}/{total}\r\n\r\n",
                        total - s,
                        total - 1
                    )
                    .into_bytes();
                    o.extend_from_slice(&blob[s..]);
                    o
                }
                _ => {
                    let mut o = format!(
                        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: {total}\r\n\r\n"
                    )
                    .into_bytes();
                    o.extend_from_slice(&blob);
                    o
                }
            };
            let _ = sock.write_all(&out).await;
            let _ = sock.shutdown().await;
        }
    });
    Server { addr, ranges }
}

fn blob() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn client(tries: u32) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        insecure: true,
        ..Default::default()
    })
    .unwrap()
    .with_retry(RetryPolicy {
        tries,
        backoff: Duration::from_millis(5),
    })
}

async fn download(
    acts: Vec<Act>,
    tries: u32,
) -> (Result<(), ClientError>, Vec<Option<String>>, Vec<u8>) {
    let data = blob();
    let desc = Descriptor {
        media_type: media_types::OCI_LAYER.into(),
        digest: Digest::of(&data),
        size: data.len() as u64,
        platform: None,
    };
    let server = serve(data, acts).await;
    let r: Reference = format!("{}/x:1", server.addr).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial");
    let res = client(tries)
        .download_blob_to(&r, &desc, &path, &|_| {})
        .await;
    let got = std::fs::read(&path).unwrap_or_default();
    let ranges = server.ranges.lock().unwrap().clone();
    (res, ranges, got)
}

#[tokio::test]
async fn interrupted_download_resumes_with_range() {
    let (res, ranges, got) = download(vec![Act::CutHalf, Act::Serve], 4).await;
    res.unwrap();
    assert_eq!(got, blob());
    assert_eq!(ranges, vec![None, Some(format!("bytes={}-", 100_000))]);
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let (res, ranges, got) = download(vec![Act::CutHalf, Act::IgnoreRange], 4).await;
    res.unwrap();
    assert_eq!(got, blob(), "the whole blob once, not the first half twice");
    assert_eq!(ranges.len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let (res, ranges, got) =
        download(vec![Act::Unavailable, Act::Unavailable, Act::Serve], 4).await;
    res.unwrap();
    assert_eq!(got, blob());
    assert_eq!(ranges.len(), 3);

    let (res, ranges, _) = download(vec![Act::Unavailable; 8], 3).await;
    let e = res.unwrap_err();
    assert!(
        matches!(e, ClientError::Registry { status: 503, .. }),
        "{e}"
    );
    assert!(e.is_transient());
    assert_eq!(ranges.len(), 3, "three tries in all");
}

#[tokio::test]
async fn a_partial_file_left_by_a_dead_process_is_resumed() {
    let data = blob();
    let desc = Descriptor {
        media_type: media_types::OCI_LAYER.into(),
        digest: Digest::of(&data),
        size: data.len() as u64,
        platform: None,
    };
    let server = serve(data.clone(), vec![Act::Serve]).await;
    let r: Reference = format!("{}/x:1", server.addr).parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial");
    std::fs::write(&path, &data[..12_345]).unwrap();
    client(1)
        .download_blob_to(&r, &desc, &path, &|_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(
        *server.ranges.lock().unwrap(),
        vec![Some("bytes=12345-".to_string())]
    );

    // A partial file that is not a prefix of the blob: digest mismatch, file removed.
    let server = serve(data.clone(), vec![Act::Serve]).await;
    let r: Reference = format!("{}/x:1", server.addr).parse().unwrap();
    std::fs::write(&path, vec![0u8; 500]).unwrap();
    let e = client(1)
        .download_blob_to(&r, &desc, &path, &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e}");
    assert!(!path.exists(), "a corrupt partial file is discarded");
}
