//! Berth's front end: a layer-7 reverse proxy from public hostnames to site instances.
//!
//! A request flows through it like this:
//!
//! 1. [`server`] accepts a TCP connection and serves HTTP/1.1 or HTTP/2 (h2c, prior
//!    knowledge) on it with hyper's auto builder.
//! 2. [`proxy`] finds the request's host ([`host`]), looks it up in the current
//!    [`table::RouteTable`] (one atomic load, never blocked by the control plane), picks a
//!    ready endpoint round robin and forwards the request to that worker's agent ingress
//!    with a pooled keep-alive client, retrying once on the next endpoint if the
//!    connection could not be made ([`body`] lets the unsent request body be reused).
//! 3. [`watch`] keeps a `Routes.WatchRoutes` stream open to the controller and swaps in
//!    each new table. When the controller is away the last table keeps serving.
//! 4. [`metrics`] counts requests per site and status class and times upstream calls.

pub mod body;
pub mod host;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod table;
pub mod watch;

pub use metrics::Metrics;
pub use server::{run, Config, ServeError};
pub use table::RouteTable;

/// `error: cause: cause` on one line, for logs (tonic and hyper put the useful part of
/// an error in its sources).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !out.ends_with(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}
