//! What an open asks the file server: whether the names this mount reached a file by
//! still lead to it (close-to-open for names: a stale one answers ESTALE and the kernel
//! looks the path up again), the file's current version, and for a small file in a
//! version this mount holds no pages of, its contents. See docs/home-semantics.md.
//!
//! When the server promised to call back about the file and those names (see
//! [`super::promised`]), the open asks nothing: the promise says they are current.
//! The first open that has to ask in a directory also brings the directory's other
//! small files, promised, so the opens that follow there need no round trip.

use berth_api::volume::{Attr, LookupRequest};
use bytes::Bytes;
use fuse3::Result as FuseResult;

use super::{attr_of, errno, Handle, VolumeFs, READ_SMALL};

/// Bytes of sibling files an open's lookup may bring along (a path lookup brings
/// entries only: a `stat` or `unlink` storm should not pull file contents along).
const SIBLINGS_BUDGET: u32 = 4 << 20;

impl VolumeFs {
    /// The attributes of file `ino` fresh from the server, for an open: asks the
    /// server for the names `ino` was reached by here and checks that they still
    /// lead to `ino`. When one does not (removed, or replaced by a rename on another
    /// mount), ESTALE makes the kernel look the whole path up again and retry the
    /// open once, so a cached name never opens a file another mount replaced.
    /// Also says whether the kernel looked the file up again just before (after an
    /// ESTALE), so it holds the attributes returned, and brings the contents of a
    /// small file whose version differs from the one this mount last opened.
    pub(super) async fn revalidate(&self, ino: u64) -> FuseResult<(Attr, bool, Option<Bytes>)> {
        let stale = || errno(libc::ESTALE);
        if self.names.take_fresh(ino) {
            if let Some(attr) = self.attrs.get(ino) {
                return Ok((attr, true, None));
            }
        }
        let names = self.names.of(ino);
        let promised = self.promised.for_open(ino, &names);
        self.metrics.open(promised.is_some());
        if let Some((attr, contents)) = promised {
            self.attrs.put(&attr);
            return Ok((attr, false, contents));
        }
        let held = self.attrs.last_open(ino).unwrap_or_default();
        let mut fresh = None;
        let mut contents = None;
        for (i, (parent, name)) in names.into_iter().enumerate() {
            let ticket = self.promised.ticket();
            let list = i == 0 && ticket.is_some() && self.promised.wants_listing(parent, true);
            let req = LookupRequest {
                volume: self.volume.clone(),
                parent,
                name: name.clone(),
                read_small: READ_SMALL,
                cached_mtime_ns: held.0,
                cached_ctime_ns: held.1,
                cached_size: held.2,
                promise: ticket.is_some(),
                siblings: list,
                siblings_budget: if list { SIBLINGS_BUDGET } else { 0 },
                for_open: true,
            };
            match self
                .client
                .unary("lookup", req, |mut c, r| async move { c.lookup(r).await })
                .await
            {
                Ok(reply) => {
                    let attr = attr_of(reply.value.attr)?;
                    if attr.ino != ino {
                        self.names.found_stale(parent, &name);
                        return Err(stale());
                    }
                    if let Some(ticket) = ticket {
                        self.promised
                            .accept(ticket, parent, &name, &reply.value, list);
                    }
                    fresh = Some(attr);
                    contents = reply.value.data;
                }
                Err(e) if e == libc::ENOENT || e == libc::ENOTDIR => {
                    self.names.found_stale(parent, &name);
                    return Err(stale());
                }
                Err(e) => return Err(errno(e)),
            }
        }
        let attr = match fresh {
            Some(attr) => {
                self.attrs.put(&attr);
                attr
            }
            None => self.fetch_attr(ino).await.map_err(|e| {
                if e == libc::ENOENT {
                    stale()
                } else {
                    errno(e)
                }
            })?,
        };
        Ok((attr, false, contents))
    }

    /// Forgets the contents open handles of `ino` hold (a write or truncate went
    /// through this mount).
    pub(super) fn drop_contents(&self, ino: u64) {
        for handle in self.handles().values_mut() {
            if let Handle::File(h) = handle {
                if h.ino == ino {
                    h.contents = None;
                }
            }
        }
    }
}
