//! Egress for sandboxes: a veth pair per instance, NAT, and a host firewall that keeps
//! every sandbox away from the worker, the platform and its neighbours.
//!
//! Ingress does not use any of this: the agent still reaches an app by opening sockets
//! inside its namespace ([`crate::netns`]). This module only gives the namespace a way
//! out:
//!
//! ```text
//!  sandbox netns                       host
//!  eth0 10.240.a.b+2/30  <--veth-->  bv<suffix> 10.240.a.b+1/30 --(forward, masquerade)--> world
//! ```
//!
//! - [`pool`]: one /30 per instance from a private range (default `10.240.0.0/16`),
//!   claimed host-wide so parallel agents never share a pair;
//! - [`link`]: the veth pair, its addresses and the sandbox's default route;
//! - [`nft`]: Berth's own nftables table `inet berth` (input: nothing from a sandbox
//!   reaches the host; forward: no sandbox reaches another; per-instance chain with
//!   anti-spoofing and the outbound connection limit; masquerade);
//! - [`conntrack`]: current outbound flows per instance, for `/metrics`.
//!
//! [`Network::attach`] makes all of it for one instance, [`Network::detach`] removes all
//! of it (and is what cleans up after a crash: it works from the instance id alone).
//! This module must never add rules outside table `inet berth` nor touch links whose
//! name it did not make.

pub mod conntrack;
pub mod link;
pub mod nft;
pub mod pool;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use thiserror::Error;
use tracing::{debug, info, instrument, warn};

pub use pool::{Block, Ipv4Net};

/// App Service's per-instance outbound connection limit, Berth's default.
pub const DEFAULT_OUTBOUND_CONNECTION_LIMIT: u32 = 1920;
/// Default address pool of the veth pairs.
pub const DEFAULT_POOL: &str = "10.240.0.0/16";
/// Default directory of the host-wide address claims.
pub const DEFAULT_CLAIMS_DIR: &str = "/run/berth/net/claims";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum NetworkError {
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error("setting up the sandbox link: {0}")]
    Link(#[from] link::LinkError),
    #[error("sandbox firewall: {0}")]
    Nft(#[from] nft::NftError),
    #[error("enabling IPv4 forwarding (/proc/sys/net/ipv4/ip_forward): {0}")]
    Forwarding(std::io::Error),
    #[error("network helper task failed: {0}")]
    Join(String),
}

/// Network settings of the agent.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Private range the veth /30s come from; every agent on a host must use the same.
    pub pool: Ipv4Net,
    /// New outbound flows beyond this many open ones are rejected, per instance.
    pub outbound_connection_limit: u32,
    /// Host-wide directory of address claims.
    pub claims_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            pool: DEFAULT_POOL.parse().expect("default pool is valid"),
            outbound_connection_limit: DEFAULT_OUTBOUND_CONNECTION_LIMIT,
            claims_dir: PathBuf::from(DEFAULT_CLAIMS_DIR),
        }
    }
}

/// Host link name of an instance's veth: `bv` + the random suffix of the instance id
/// (after the last `-`), at most 15 bytes as the kernel requires.
pub fn veth_name(instance_id: &str) -> String {
    let suffix: String = instance_id
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let suffix = if suffix.is_empty() {
        // Not an id the controller makes; still give it a stable, valid name.
        let h = instance_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{:012x}", h & 0xffff_ffff_ffff)
    } else {
        suffix
    };
    let keep = suffix.len().saturating_sub(13);
    format!("bv{}", &suffix[keep..])
}

/// What was made for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub instance: String,
    pub veth: String,
    pub block: Block,
}

impl Attachment {
    /// The sandbox's own address.
    pub fn address(&self) -> Ipv4Addr {
        self.block.sandbox()
    }
    /// The host end (the sandbox's gateway).
    pub fn gateway(&self) -> Ipv4Addr {
        self.block.host()
    }
}

/// Outbound connection figures of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    pub instance: String,
    /// New flows rejected by the connection limit since the instance started.
    pub rejected: u64,
    /// Flows open now.
    pub open: u64,
}

/// Sandbox egress of this agent.
#[derive(Debug)]
pub struct Network {
    cfg: NetworkConfig,
    pool: pool::Pool,
    attached: Mutex<BTreeMap<String, Attachment>>,
}

impl Network {
    /// Enables forwarding and loads the base ruleset (idempotent: agents sharing the host
    /// each load it; the base chains are replaced in one transaction).
    pub fn init(cfg: NetworkConfig) -> Result<Self, NetworkError> {
        enable_forwarding()?;
        nft::apply("loading the base ruleset", &nft::base_ruleset(cfg.pool))?;
        let pool = pool::Pool::open(cfg.pool, &cfg.claims_dir)?;
        info!(pool = %cfg.pool, limit = cfg.outbound_connection_limit, "sandbox egress ready");
        Ok(Self {
            cfg,
            pool,
            attached: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// Gives the instance's namespace (a name under /run/netns) a veth, an address, a
    /// default route and its firewall rules. Leftovers of an earlier run of the same id are
    /// removed first; on failure nothing is left behind.
    #[instrument(skip(self), fields(instance = instance_id))]
    pub fn attach(&self, instance_id: &str, netns: &str) -> Result<Attachment, NetworkError> {
        self.detach(instance_id)?;
        let veth = veth_name(instance_id);
        let block = self.pool.claim(instance_id)?;
        let att = Attachment {
            instance: instance_id.to_string(),
            veth: veth.clone(),
            block,
        };
        let made = link::create(&veth, netns, block)
            .map_err(NetworkError::from)
            .and_then(|()| {
                let objects = nft::InstanceObjects::for_veth(&veth);
                nft::apply(
                    &format!("adding the rules of {veth}"),
                    &nft::instance_ruleset(
                        &objects,
                        block.sandbox(),
                        self.cfg.outbound_connection_limit,
                    ),
                )
                .map_err(NetworkError::from)
            });
        if let Err(e) = made {
            if let Err(undo) = self.detach(instance_id) {
                warn!(error = %undo, "undoing a failed attach");
            }
            return Err(e);
        }
        debug!(veth = %veth, address = %block.sandbox(), "sandbox link up");
        self.attached
            .lock()
            .expect("network table lock poisoned")
            .insert(instance_id.to_string(), att.clone());
        Ok(att)
    }

    /// Removes everything [`Network::attach`] makes for `instance_id`: rules, link and
    /// address claim. Missing pieces are fine; the claim is only released once the link
    /// is gone, so a pair still in use is never handed out again.
    #[instrument(skip(self), fields(instance = instance_id))]
    pub fn detach(&self, instance_id: &str) -> Result<(), NetworkError> {
        self.attached
            .lock()
            .expect("network table lock poisoned")
            .remove(instance_id);
        let veth = veth_name(instance_id);
        nft::remove_instance(&nft::InstanceObjects::for_veth(&veth))?;
        link::delete(&veth)?;
        for block in self.pool.claims_of(instance_id) {
            self.pool.release(instance_id, block);
        }
        Ok(())
    }

    /// [`Network::attach`] on a blocking thread.
    pub async fn attach_async(
        self: &Arc<Self>,
        instance_id: &str,
        netns: &str,
    ) -> Result<Attachment, NetworkError> {
        let (me, id, ns) = (self.clone(), instance_id.to_string(), netns.to_string());
        tokio::task::spawn_blocking(move || me.attach(&id, &ns))
            .await
            .map_err(|e| NetworkError::Join(e.to_string()))?
    }

    /// [`Network::detach`] on a blocking thread.
    pub async fn detach_async(self: &Arc<Self>, instance_id: &str) -> Result<(), NetworkError> {
        let (me, id) = (self.clone(), instance_id.to_string());
        tokio::task::spawn_blocking(move || me.detach(&id))
            .await
            .map_err(|e| NetworkError::Join(e.to_string()))?
    }

    /// The attachment of an instance, if it has one.
    pub fn attachment(&self, instance_id: &str) -> Option<Attachment> {
        self.attached
            .lock()
            .expect("network table lock poisoned")
            .get(instance_id)
            .cloned()
    }

    /// Rejected and open outbound flows of every attached instance.
    pub fn stats(&self) -> Result<Vec<InstanceStats>, NetworkError> {
        let attached: Vec<Attachment> = self
            .attached
            .lock()
            .expect("network table lock poisoned")
            .values()
            .cloned()
            .collect();
        if attached.is_empty() {
            return Ok(Vec::new());
        }
        let counters: BTreeMap<String, u64> = nft::counters()?.into_iter().collect();
        let addrs: Vec<Ipv4Addr> = attached.iter().map(Attachment::address).collect();
        let open = conntrack::open_flows(&addrs);
        Ok(attached
            .into_iter()
            .map(|a| InstanceStats {
                rejected: counters
                    .get(&nft::InstanceObjects::for_veth(&a.veth).counter)
                    .copied()
                    .unwrap_or(0),
                open: open.get(&a.address()).copied().unwrap_or(0),
                instance: a.instance,
            })
            .collect())
    }
}

fn enable_forwarding() -> Result<(), NetworkError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let now = std::fs::read_to_string(PATH).map_err(NetworkError::Forwarding)?;
    if now.trim() != "1" {
        std::fs::write(PATH, "1").map_err(NetworkError::Forwarding)?;
        info!("enabled IPv4 forwarding for sandbox egress (only veths bv* are forwarded by table inet berth)");
    }
    Ok(())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

/// Exposes [`Network::stats`] on `/metrics`, read fresh on every scrape:
/// `outbound_connections_rejected_total{instance}`, `outbound_connections{instance}` and
/// `outbound_connection_limit`.
#[derive(Debug)]
pub struct NetworkCollector(pub Arc<Network>);

impl Collector for NetworkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.0.stats() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "reading outbound connection figures for /metrics");
                Vec::new()
            }
        };
        let limit = ConstGauge::new(i64::from(self.0.cfg.outbound_connection_limit));
        limit.encode(encoder.encode_descriptor(
            "outbound_connection_limit",
            "Open outbound connections allowed per instance",
            None,
            limit.metric_type(),
        )?)?;
        let mut rejected = encoder.encode_descriptor(
            "outbound_connections_rejected",
            "New outbound connections rejected by the per-instance limit",
            None,
            MetricType::Counter,
        )?;
        for s in &stats {
            ConstCounter::new(s.rejected).encode(rejected.encode_family(&InstanceLabels {
                instance: s.instance.clone(),
            })?)?;
        }
        let mut open = encoder.encode_descriptor(
            "outbound_connections",
            "Open outbound connections per instance",
            None,
            MetricType::Gauge,
        )?;
        for s in &stats {
            ConstGauge::new(s.open as i64).encode(open.encode_family(&InstanceLabels {
                instance: s.instance.clone(),
            })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_use_the_id_suffix_and_fit_ifnamsiz() {
        assert_eq!(veth_name("hello-a1b2c3"), "bva1b2c3");
        assert_eq!(veth_name("my-site-x9y8z7"), "bvx9y8z7");
        let long = veth_name("s-abcdefghijklmnopqrstuvwxyz");
        assert_eq!(long, "bvnopqrstuvwxyz");
        assert!(long.len() <= 15);
        let odd = veth_name("weird-");
        assert!(odd.starts_with("bv") && odd.len() <= 15, "{odd}");
        assert_eq!(odd, veth_name("weird-"), "stable");
    }
}
