//! Long-running operations (image pulls and pushes): a row of the
//! repository each, so that any replica says how far one has come.

use vws_model::records::{Operation, OperationState};
use vws_model::Identity;

use crate::core::Service;
use crate::error::ServiceError;

/// An operation whose replica has not moved it for this long is reported
/// as failed even though that replica still renews its lease (it hung); one
/// whose replica's lease has run out is failed at once.
pub const STALE_AFTER: time::Duration = time::Duration::minutes(2);

impl Service {
    /// A new operation of `kind` on `target`, recorded as running.
    pub(crate) async fn start_operation(
        &self,
        who: &Identity,
        kind: &str,
        target: &str,
        phase: &str,
    ) -> Result<Operation, ServiceError> {
        let now = self.clock.now();
        let op = Operation {
            id: format!("op-{}", hex::encode(rand::random::<[u8; 8]>())),
            owner: who.dn.clone(),
            kind: kind.into(),
            target: target.into(),
            state: OperationState::Running,
            phase: phase.into(),
            layers: Vec::new(),
            image: None,
            error: None,
            created_at: now,
            modified_at: now,
        };
        self.store.put_operation(&op, &self.instance).await?;
        Ok(op)
    }

    /// Records how an operation ended: what it made, or why it failed.
    pub(crate) async fn end_operation(
        &self,
        op: &mut Operation,
        done: Result<String, ServiceError>,
    ) {
        match done {
            Ok(made) => {
                op.state = OperationState::Done;
                op.phase = "done".into();
                op.image = Some(made);
            }
            Err(e) => {
                tracing::warn!(op = %op.id, kind = %op.kind, error = %e, "operation failed");
                op.state = OperationState::Failed;
                op.error = Some(e.to_string());
            }
        }
        op.modified_at = self.clock.now();
        if let Err(e) = self.store.put_operation(op, &self.instance).await {
            tracing::warn!(op = %op.id, error = %e, "could not record the operation's end");
        }
    }

    /// An operation the caller may see; one its replica stopped moving is
    /// reported as failed.
    pub(crate) async fn operation(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Operation, ServiceError> {
        let now = self.clock.now();
        match self.store.operation(id, now).await? {
            Some((mut op, alive)) if op.owner == who.dn || who.is_admin() => {
                if op.state == OperationState::Running
                    && (!alive || now - op.modified_at > STALE_AFTER)
                {
                    op.state = OperationState::Failed;
                    op.error = Some(format!(
                        "its service replica stopped at {} without finishing it; pull again",
                        op.modified_at
                    ));
                }
                Ok(op)
            }
            _ => Err(ServiceError::NotFound(format!("operation {id} not found"))),
        }
    }
}
