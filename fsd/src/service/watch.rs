//! The promise side of the `Volumes` service: lookups that grant promises and bring a
//! directory's small files along, and the `Watch` stream that carries breaks and
//! heartbeats. The promise table itself is [`super::promises`].

use std::collections::HashMap;

use berth_api::volume::{
    watch_event, watch_request, Attr, Entry, FileKind, LookupRequest, Sibling, WatchEvent,
    WatchRequest,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::{VolumeService, MAX_SIBLINGS, MAX_SIBLINGS_BUDGET};

/// Largest sibling whose contents come along when the request sets no `read_small`.
const SIBLING_SMALL: u32 = 128 << 10;
use crate::error::{FsError, FsResult};
use crate::names::validate_name;

impl VolumeService {
    /// A lookup; with `promise` from a mount with a live watch stream, promises on
    /// the parent directory and the inode are registered before their state is read,
    /// and with `siblings` the directory's other entries (and with `siblings_budget`
    /// its small files) come along.
    pub(super) async fn lookup_op(
        &self,
        r: &LookupRequest,
        mount: Option<&str>,
    ) -> FsResult<Entry> {
        validate_name(&r.name)?;
        let mount = mount.filter(|_| r.promise);
        let promised = mount.is_some_and(|m| self.promises.grant(&r.volume, m, &[r.parent]));
        let attr = self.meta.lookup(&r.volume, r.parent, &r.name).await?;
        let (Some(mount), true) = (mount, promised) else {
            return self.with_small_contents(r, attr).await;
        };
        if !self.promises.grant(&r.volume, mount, &[attr.ino]) {
            return self.with_small_contents(r, attr).await;
        }
        // Read again now that the promise is registered: a change after this read
        // breaks it.
        let attr = self.meta.get_attr(&r.volume, attr.ino).await?;
        let mut entry = self.with_small_contents(r, attr).await?;
        entry.promised = true;
        if r.siblings {
            let (siblings, complete) = self.siblings(r, mount).await?;
            entry.siblings = siblings;
            entry.listing_complete = complete;
        }
        Ok(entry)
    }

    /// Entries of `r.parent` other than `r.name` (at most [`MAX_SIBLINGS`]) with
    /// promised attributes, and the contents of the small regular files among them
    /// up to the byte budget. The caller holds a promise on the directory.
    async fn siblings(&self, r: &LookupRequest, mount: &str) -> FsResult<(Vec<Sibling>, bool)> {
        let listed = self
            .meta
            .read_dir_page(&r.volume, r.parent, b"", MAX_SIBLINGS + 1)
            .await?;
        let complete = listed.len() <= MAX_SIBLINGS as usize;
        let mut out: Vec<Sibling> = listed
            .into_iter()
            .take(MAX_SIBLINGS as usize)
            .filter(|(name, _)| *name != r.name)
            .map(|(name, attr)| Sibling {
                name,
                ino: attr.ino,
                attr: None,
                data: None,
            })
            .collect();
        let inos: Vec<u64> = out.iter().map(|s| s.ino).collect();
        if inos.is_empty() || !self.promises.grant(&r.volume, mount, &inos) {
            return Ok((out, complete));
        }
        // Attributes read again now that the promises on them are registered: a
        // change after this read breaks them.
        let fresh: HashMap<u64, Attr> = self
            .meta
            .read_dir_page(&r.volume, r.parent, b"", MAX_SIBLINGS + 1)
            .await?
            .into_iter()
            .map(|(_, attr)| (attr.ino, attr))
            .collect();
        let small = u64::from(match r.read_small {
            0 => SIBLING_SMALL,
            n => n.min(super::MAX_READ_SMALL),
        });
        let mut budget = u64::from(r.siblings_budget.min(MAX_SIBLINGS_BUDGET));
        let mut wanted = Vec::new();
        for (i, sibling) in out.iter_mut().enumerate() {
            let Some(attr) = fresh.get(&sibling.ino) else {
                continue;
            };
            sibling.attr = Some(*attr);
            if budget > 0 && attr.kind == FileKind::File as i32 && attr.size <= small.min(budget) {
                budget -= attr.size;
                wanted.push(i);
            }
        }
        for i in wanted {
            let sibling = &mut out[i];
            // Under the inode's lock (writers hold it too) attributes and bytes are
            // of one version.
            let mut inode = self.data.lock(&r.volume, sibling.ino).await;
            let attr = match self.meta.get_attr(&r.volume, sibling.ino).await {
                Ok(attr) => attr,
                Err(FsError::NotFound) => continue,
                Err(err) => return Err(err),
            };
            sibling.attr = Some(attr);
            if attr.kind != FileKind::File as i32 || attr.size > small {
                continue;
            }
            let data = inode.read(attr.size, 0, attr.size as u32).await?;
            self.metrics.add_read(data.len() as u64);
            sibling.data = Some(data);
        }
        Ok((out, complete))
    }

    /// Serves one watch stream: `hello`, then heartbeats (answered while this server
    /// serves the volume; the stream ends when it stops) and break acks.
    pub(super) async fn watch_op(
        &self,
        mut inbound: Streaming<WatchRequest>,
    ) -> Result<mpsc::Receiver<Result<WatchEvent, Status>>, Status> {
        let hello = match inbound.message().await? {
            Some(WatchRequest {
                msg: Some(watch_request::Msg::Hello(hello)),
            }) => hello,
            _ => {
                return Err(FsError::Invalid(
                    "a watch stream starts with hello {volume, mount_id}".to_string(),
                )
                .into_status())
            }
        };
        if hello.mount_id.is_empty() || hello.mount_id.len() > 128 {
            return Err(FsError::Invalid(
                "a watch stream needs a mount id of 1 to 128 bytes".to_string(),
            )
            .into_status());
        }
        // Validates the volume and takes its lease, like every call.
        self.run("watch", &hello.volume, async { Ok(()) }).await?;
        let (tx, rx) = mpsc::channel(1024);
        let promises = self.promises.clone();
        let data = self.data.clone();
        let stream = promises.connect(&hello.volume, &hello.mount_id, tx.clone());
        let welcome = WatchEvent {
            msg: Some(watch_event::Msg::Welcome(true)),
        };
        if tx.send(Ok(welcome)).await.is_err() {
            promises.disconnected(&hello.mount_id, stream);
            return Ok(rx);
        }
        tokio::spawn(async move {
            let mount = hello.mount_id;
            loop {
                match inbound.message().await {
                    Ok(Some(WatchRequest {
                        msg: Some(watch_request::Msg::Heartbeat(n)),
                    })) => {
                        if !data.serves(&hello.volume) {
                            tracing::info!(
                                volume = hello.volume,
                                mount,
                                "no longer serving the volume; ending its watch stream"
                            );
                            break;
                        }
                        if !promises.heard(&mount, stream) {
                            break;
                        }
                        let beat = WatchEvent {
                            msg: Some(watch_event::Msg::Heartbeat(n)),
                        };
                        if tx.send(Ok(beat)).await.is_err() {
                            break;
                        }
                    }
                    Ok(Some(WatchRequest {
                        msg: Some(watch_request::Msg::Ack(id)),
                    })) => promises.acked(&mount, stream, id),
                    Ok(Some(WatchRequest {
                        msg: Some(watch_request::Msg::Bye(_)),
                    })) => {
                        promises.forget_stream(&mount, stream, false);
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            promises.disconnected(&mount, stream);
        });
        Ok(rx)
    }
}
