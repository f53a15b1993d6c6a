//! The agent's admin socket: operator commands on the worker itself (`berth worker gc`).
//!
//! A Unix socket at `<state>/admin.sock`, mode 0600 in a root-only state directory, so
//! only root on the worker can use it: file permissions are the authentication, and the
//! metrics port (which monitoring systems may reach over the network) stays read-only.
//! The protocol is one request line and one JSON answer line:
//!
//! ```text
//! -> gc
//! <- {"ok":true,"summary":"removed 1 image(s), ...","images_removed":["sha256:..."],"bytes_freed":123,...}
//! <- {"ok":false,"error":"..."}
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::state::Agent;

/// Longest request line accepted.
const MAX_LINE: usize = 1024;

/// The admin socket of an agent whose state directory is `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.sock")
}

/// Binds the admin socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers admin requests until the task is dropped.
pub async fn serve(listener: UnixListener, agent: Arc<Agent>) {
    info!(socket = ?listener.local_addr().ok(), "admin socket listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(r).take(MAX_LINE as u64);
            let answer = match reader.read_line(&mut line).await {
                Ok(_) => handle(&agent, line.trim()).await,
                Err(e) => json!({"ok": false, "error": format!("reading the request: {e}")}),
            };
            let mut out = answer.to_string();
            out.push('\n');
            if let Err(e) = w.write_all(out.as_bytes()).await {
                debug!(error = %e, "admin client went away");
            }
        });
    }
}

async fn handle(agent: &Agent, request: &str) -> Value {
    match request {
        "gc" => match agent.images.gc().await {
            Ok(r) => {
                let summary = crate::gc::summary(&r);
                info!("image garbage collection by an operator: {summary}");
                json!({
                    "ok": true,
                    "summary": summary,
                    "images_removed": r.images_removed.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "snapshots_removed": r.snapshots_removed,
                    "blobs_removed": r.blobs_removed,
                    "leftovers_removed": r.leftovers_removed,
                    "bytes_freed": r.bytes_freed,
                    "bytes_after": r.bytes_after,
                    "images_kept": r.images_kept,
                    "images_in_use": agent.images.in_use().len(),
                })
            }
            Err(e) => {
                warn!(error = %e, "image garbage collection by an operator failed");
                json!({"ok": false, "error": format!("image garbage collection failed: {e}")})
            }
        },
        other => json!({
            "ok": false,
            "error": format!("unknown admin request {other:?}: the agent understands `gc`"),
        }),
    }
}
