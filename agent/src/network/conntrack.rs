//! Current outbound connections per sandbox address, read from the host's connection
//! tracking table (`/proc/net/nf_conntrack`).
//!
//! Counts what the `ct count` limit counts: flows whose original source is the sandbox,
//! except TCP flows already closing (`TIME_WAIT`, `CLOSE`), which the kernel's connection
//! counter drops from its lists too.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Where the kernel exposes the table of the reader's network namespace.
pub const PROC_PATH: &str = "/proc/net/nf_conntrack";

/// Open flows per original source address, for the addresses in `of`.
pub fn open_flows(of: &[Ipv4Addr]) -> HashMap<Ipv4Addr, u64> {
    let text = std::fs::read_to_string(PROC_PATH).unwrap_or_default();
    count(&text, of)
}

/// Parses the text of `/proc/net/nf_conntrack`.
pub fn count(text: &str, of: &[Ipv4Addr]) -> HashMap<Ipv4Addr, u64> {
    let mut out: HashMap<Ipv4Addr, u64> = of.iter().map(|a| (*a, 0)).collect();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        // "ipv4 2 tcp 6 <timeout> [STATE] src=… dst=… …"
        let (Some("ipv4"), Some(_), Some(proto)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let rest: Vec<&str> = fields.collect();
        if proto == "tcp" && rest.iter().any(|f| *f == "TIME_WAIT" || *f == "CLOSE") {
            continue;
        }
        let Some(src) = rest
            .iter()
            .find_map(|f| f.strip_prefix("src="))
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if let Some(n) = out.get_mut(&src) {
            *n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_open_flows_by_original_source() {
        let text = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.240.0.2 dst=10.241.0.2 sport=40000 dport=80 src=10.241.0.2 dst=10.241.0.1 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.240.0.2 dst=10.241.0.2 sport=40001 dport=80 src=10.241.0.2 dst=10.241.0.1 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=10.240.0.2 dst=10.241.0.2 sport=5000 dport=53 [UNREPLIED] src=10.241.0.2 dst=10.241.0.1 sport=53 dport=5000 mark=0 zone=0 use=2
ipv4     2 tcp      6 60 SYN_SENT src=10.240.0.6 dst=10.241.0.2 sport=1 dport=2 [UNREPLIED] src=10.241.0.2 dst=10.240.0.6 sport=2 dport=1 mark=0 zone=0 use=2
ipv4     2 tcp      6 60 ESTABLISHED src=10.241.0.2 dst=10.240.0.2 sport=1 dport=2 src=10.240.0.2 dst=10.241.0.2 sport=2 dport=1 mark=0 zone=0 use=2
ipv6     10 tcp      6 60 ESTABLISHED src=::1 dst=::1 sport=1 dport=2 src=::1 dst=::1 sport=2 dport=1 mark=0 zone=0 use=2
";
        let a = Ipv4Addr::new(10, 240, 0, 2);
        let b = Ipv4Addr::new(10, 240, 0, 6);
        let c = Ipv4Addr::new(10, 240, 0, 10);
        let got = count(text, &[a, b, c]);
        assert_eq!(
            got[&a], 2,
            "established tcp + udp, not time-wait, not inbound"
        );
        assert_eq!(got[&b], 1);
        assert_eq!(got[&c], 0);
    }
}
