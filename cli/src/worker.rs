//! `berth worker gc`: operator commands run on a worker, through its agent's admin socket
//! (`<state>/agent/admin.sock`, root only; see `berth_agent::admin`).
//!
//! These do not go through the controller: collecting the image store is a local
//! decision about local disk, and the socket's file permissions are its authentication.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Errors talking to the agent's admin socket.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("connecting to the agent's admin socket {path}: {source}; is berth-agent running with this state directory (berth up --state-dir / berth worker --state-dir)? It needs root")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the agent on {path}: {detail}")]
    Protocol { path: PathBuf, detail: String },
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// The admin socket of the agent of a `berth up` whose state directory is `state_dir`.
pub fn default_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("agent").join("admin.sock")
}

/// Sends one admin request line and returns the agent's JSON answer (`ok` checked).
pub async fn request(socket: &Path, line: &str) -> Result<serde_json::Value, WorkerError> {
    let proto = |detail: String| WorkerError::Protocol {
        path: socket.to_path_buf(),
        detail,
    };
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|source| WorkerError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| proto(format!("sending the request: {e}")))?;
    let mut answer = String::new();
    // A full collection waits for running pulls; give it time.
    tokio::time::timeout(
        Duration::from_secs(600),
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .map_err(|_| proto("no answer within 10 minutes".into()))?
    .map_err(|e| proto(format!("reading the answer: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(answer.trim()).map_err(|e| proto(format!("bad answer: {e}")))?;
    if v["ok"].as_bool() != Some(true) {
        let err = v["error"].as_str().unwrap_or("no reason given").to_string();
        return Err(WorkerError::Refused(err));
    }
    Ok(v)
}
