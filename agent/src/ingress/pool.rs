//! Idle keep-alive connections to apps, per instance.
//!
//! Connections are tagged with the epoch of the instance run they were opened to, so a
//! restarted instance (new namespace, new process) never gets a connection of the old one.

use std::collections::HashMap;
use std::sync::Mutex;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// Idle connections kept per instance.
pub const MAX_IDLE_PER_INSTANCE: usize = 16;

/// Idle connections of one instance, tagged with the run (epoch) they belong to.
type Idle = (u64, Vec<SendRequest<Incoming>>);

/// Per-instance pool of idle HTTP/1.1 connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Idle>>,
}

impl Pool {
    /// An idle, open connection to run `epoch` of instance `id`, if any.
    pub fn take(&self, id: &str, epoch: u64) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().expect("connection pool lock poisoned");
        let (e, conns) = idle.get_mut(id)?;
        if *e != epoch {
            idle.remove(id);
            return None;
        }
        while let Some(c) = conns.pop() {
            if !c.is_closed() && c.is_ready() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection that finished its exchange.
    pub fn put(&self, id: &str, epoch: u64, conn: SendRequest<Incoming>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("connection pool lock poisoned");
        let entry = idle
            .entry(id.to_string())
            .or_insert_with(|| (epoch, Vec::new()));
        if entry.0 != epoch {
            if entry.0 > epoch {
                return;
            }
            *entry = (epoch, Vec::new());
        }
        entry.1.retain(|c| !c.is_closed());
        if entry.1.len() < MAX_IDLE_PER_INSTANCE {
            entry.1.push(conn);
        }
    }

    /// Drops every idle connection of instance `id`.
    pub fn forget(&self, id: &str) {
        self.idle
            .lock()
            .expect("connection pool lock poisoned")
            .remove(id);
    }

    /// Number of idle connections of instance `id` (for tests and logs).
    pub fn idle_count(&self, id: &str) -> usize {
        self.idle
            .lock()
            .expect("connection pool lock poisoned")
            .get(id)
            .map(|(_, c)| c.len())
            .unwrap_or(0)
    }
}
