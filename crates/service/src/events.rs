//! The event log's reading side: what a caller may see of it, in order
//! (written by the repository with each change, `vws_store::Store::events_after`).

use vws_model::records::Event;
use vws_model::Identity;

use crate::core::Service;
use crate::error::ServiceError;

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
