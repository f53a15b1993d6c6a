//! Address pool for sandbox veth pairs: one /30 per instance out of a private range.
//!
//! A block is claimed by creating `<claims>/<block address>` with `O_EXCL`; the file holds
//! the instance id. The claim directory lives under `/run` on purpose: it is shared by
//! every agent on the host (tests run several units side by side, and they must never
//! hand out the same pair twice), and it has the lifetime of the veth links themselves —
//! both vanish at reboot, so a claim can never outlive the link it protects or survive
//! one. A block is only released after its link is gone.

use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

/// Errors of the pool.
#[derive(Debug, Error)]
pub enum PoolError {
    #[error("invalid address pool {0:?}: expected an IPv4 prefix such as 10.240.0.0/16 (prefix length 8 to 29)")]
    Parse(String),
    #[error("creating the address claim directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("claiming {path}: {source}")]
    Claim { path: PathBuf, source: io::Error },
    #[error("address pool {0} is exhausted: every /30 is claimed (see the claim files, or use a larger pool)")]
    Exhausted(Ipv4Net),
}

/// An IPv4 prefix, e.g. `10.240.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    /// Number of /30 blocks in the prefix.
    pub fn blocks(&self) -> u32 {
        1u32 << (30 - u32::from(self.len))
    }

    /// The `index`-th /30 block.
    pub fn block(&self, index: u32) -> Block {
        Block {
            base: Ipv4Addr::from(u32::from(self.addr) + index * 4),
        }
    }

    /// True if `ip` lies inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.len));
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = PoolError;
    fn from_str(s: &str) -> Result<Self, PoolError> {
        let err = || PoolError::Parse(s.to_string());
        let (a, l) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| err())?;
        let len: u8 = l.parse().map_err(|_| err())?;
        if !(8..=29).contains(&len) {
            return Err(err());
        }
        let mask = u32::MAX << (32 - u32::from(len));
        if u32::from(addr) & !mask != 0 {
            return Err(err());
        }
        Ok(Self { addr, len })
    }
}

/// One /30: `.0` network, `.1` host end, `.2` sandbox end, `.3` broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub base: Ipv4Addr,
}

impl Block {
    /// Address of the host end of the veth (the sandbox's gateway).
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }
    /// Address of the sandbox end.
    pub fn sandbox(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 2)
    }
}

/// Claims of /30 blocks, shared by every agent on the host.
#[derive(Debug, Clone)]
pub struct Pool {
    net: Ipv4Net,
    dir: PathBuf,
}

impl Pool {
    /// A pool over `net` with its claims in `dir` (created if missing).
    pub fn open(net: Ipv4Net, dir: &Path) -> Result<Self, PoolError> {
        std::fs::create_dir_all(dir).map_err(|source| PoolError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            net,
            dir: dir.to_path_buf(),
        })
    }

    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    fn claim_path(&self, block: Block) -> PathBuf {
        self.dir.join(block.base.to_string())
    }

    /// Claims a free block for `owner`. Starts at a random block so agents racing for
    /// blocks rarely collide; a collision just moves on to the next block.
    pub fn claim(&self, owner: &str) -> Result<Block, PoolError> {
        let n = self.net.blocks();
        let start = rand::random::<u32>() % n;
        for i in 0..n {
            let block = self.net.block((start + i) % n);
            let path = self.claim_path(block);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    if let Err(source) = f.write_all(owner.as_bytes()) {
                        let _ = std::fs::remove_file(&path);
                        return Err(PoolError::Claim { path, source });
                    }
                    return Ok(block);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(PoolError::Claim { path, source }),
            }
        }
        Err(PoolError::Exhausted(self.net))
    }

    /// Blocks claimed by `owner` (normally zero or one).
    pub fn claims_of(&self, owner: &str) -> Vec<Block> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let base: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let held = std::fs::read_to_string(e.path()).ok()?;
                (held == owner && self.net.contains(base)).then_some(Block { base })
            })
            .collect()
    }

    /// Releases `block` if `owner` holds it. Call only once the link using it is gone.
    pub fn release(&self, owner: &str, block: Block) {
        let path = self.claim_path(block);
        if std::fs::read_to_string(&path).is_ok_and(|held| held == owner) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_prefixes() {
        let n: Ipv4Net = "10.240.0.0/16".parse().unwrap();
        assert_eq!(n.blocks(), 16384);
        assert_eq!(n.block(0).host(), Ipv4Addr::new(10, 240, 0, 1));
        assert_eq!(n.block(1).sandbox(), Ipv4Addr::new(10, 240, 0, 6));
        assert_eq!(n.block(16383).base, Ipv4Addr::new(10, 240, 255, 252));
        assert!(n.contains(Ipv4Addr::new(10, 240, 9, 9)));
        assert!(!n.contains(Ipv4Addr::new(10, 241, 0, 1)));
        for bad in [
            "10.240.0.1/16",
            "10.240.0.0",
            "10.240.0.0/30",
            "x/16",
            "10.0.0.0/7",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_are_exclusive_and_released_by_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open("10.250.0.0/29".parse().unwrap(), dir.path()).unwrap();
        let a = pool.claim("a").unwrap();
        let b = pool.claim("b").unwrap();
        assert_ne!(a, b);
        assert!(matches!(pool.claim("c"), Err(PoolError::Exhausted(_))));
        assert_eq!(pool.claims_of("a"), vec![a]);
        pool.release("b", a);
        assert_eq!(pool.claims_of("a"), vec![a], "b cannot release a's block");
        pool.release("a", a);
        assert!(pool.claims_of("a").is_empty());
        assert_eq!(pool.claim("c").unwrap(), a);
    }
}
