//! `berth`: the command line of Berth.
//!
//! Users and operators only ever talk to the controller's REST API through
//! [`client::ApiClient`]; `berth up` ([`up`]) is the one exception: it starts and
//! supervises every daemon of a single-machine scale unit.
//!
//! Exit codes scripts can rely on: 0 success, 1 the request failed (API or network
//! error), 2 bad command-line usage, 3 the named site does not exist.

pub mod client;
pub mod output;
pub mod progress;
pub mod registry;
pub mod up;
pub mod worker;

pub use client::{ApiClient, ClientError};
