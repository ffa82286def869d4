//! The event log's reading side: what a caller may see of it, in order
//! (written by the repository with each change, `vws_store::Store::events_after`).

use std::collections::VecDeque;
use std::sync::Arc;

use vws_model::records::Event;
use vws_model::Identity;

use crate::command::{Command, Reply};
use crate::core::Service;
use crate::error::ServiceError;

/// How often a follower looks for new events on SQLite (one process).
pub const EVENTS_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How often a follower looks for new events on PostgreSQL, where each
/// commit of events wakes it (LISTEN/NOTIFY) and this poll only catches
/// what a lost wake-up missed.
pub const EVENTS_FALLBACK_POLL: std::time::Duration = std::time::Duration::from_secs(1);

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
    let wakeups = service.store().event_wakeups();
    let state = (service, who, VecDeque::from(events), last, false, wakeups);
    let stream = futures::stream::unfold(
        state,
        move |(s, who, mut queue, mut last, mut ended, mut wake)| async move {
            loop {
                if let Some(ev) = queue.pop_front() {
                    return Some((ev, (s, who, queue, last, ended, wake)));
                }
                if ended {
                    return None;
                }
                // Seen before the read: a commit during it wakes the wait.
                if let Some(w) = &mut wake {
                    w.borrow_and_update();
                }
                match s.execute(&who, Command::Events { after: Some(last) }).await {
                    Ok(Reply::Events { events, last: l }) => {
                        if events.is_empty() {
                            if !follow {
                                ended = true;
                                continue;
                            }
                            match &mut wake {
                                Some(w) => {
                                    let woken =
                                        tokio::time::timeout(EVENTS_FALLBACK_POLL, w.changed())
                                            .await;
                                    // The listener is gone: poll.
                                    if let Ok(Err(_)) = woken {
                                        tokio::time::sleep(EVENTS_POLL).await;
                                    }
                                }
                                None => tokio::time::sleep(EVENTS_POLL).await,
                            }
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
