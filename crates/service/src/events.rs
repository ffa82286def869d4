//! The event log's reading side: what a caller may see of it, in order
//! (written by the repository with each change, `vws_store::Store::events_after`).

use std::collections::VecDeque;
use std::sync::Arc;

use vws_model::records::Event;
use vws_model::Identity;

use crate::command::{Command, Reply};
use crate::core::Service;
use crate::error::ServiceError;

/// How often a follower looks for new events (any replica's).
pub const EVENTS_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The events `who` may see after `after` (none: from now on) as a
/// stream, each read through the `Events` command (so its ACL is checked
/// every time, and a revoked caller's stream ends). Returns where it starts
/// and the stream; without `follow` it ends once the backlog is read. The
/// first read's refusal is the error.
pub async fn follow(
    service: Arc<Service>,
    who: Identity,
    after: Option<i64>,
    follow: bool,
) -> Result<(i64, impl futures::Stream<Item = Event> + Send + 'static), ServiceError> {
    let (events, last) = match service.execute(&who, Command::Events { after }).await? {
        Reply::Events { events, last } => (events, last),
        _ => unreachable!("Events answers events"),
    };
    let start = after.unwrap_or(last);
    let state = (service, who, VecDeque::from(events), last, false);
    let stream = futures::stream::unfold(
        state,
        move |(s, who, mut queue, mut last, mut ended)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((ev, (s, who, queue, last, ended)));
                }
                if ended {
                    return None;
                }
                match s.execute(&who, Command::Events { after: Some(last) }).await {
                    Ok(Reply::Events { events, last: l }) => {
                        if events.is_empty() {
                            if !follow {
                                ended = true;
                                continue;
                            }
                            tokio::time::sleep(EVENTS_POLL).await;
                        }
                        queue.extend(events);
                        last = l;
                    }
                    _ => return None,
                }
            }
        },
    );
    Ok((start, stream))
}

/// Events read at a time.
const BATCH: i64 = 100;

impl Service {
    /// Events after `after` that `who` may see: everything for an
    /// administrator, else what concerns their workspaces, jobs and images
    /// and the public images. With no `after`, none, and the sequence
    /// number of now (to follow from). Returns them and where to resume.
    pub(crate) async fn events(
        &self,
        who: &Identity,
        after: Option<i64>,
    ) -> Result<(Vec<Event>, i64), ServiceError> {
        let Some(after) = after else {
            return Ok((Vec::new(), self.store.last_event().await?));
        };
        let viewer = (!who.is_admin()).then_some(who.dn.as_str());
        let events = self.store.events_after(after, BATCH, viewer).await?;
        let last = events.last().map_or(after, |e| e.seq);
        Ok((events, last))
    }
}
