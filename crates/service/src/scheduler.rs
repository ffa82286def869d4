//! Keeping agreements' promises (docs/agreements.md), one round at a time:
//! offers expire; a reservation's workspaces are staged to their nodes
//! `stage_ahead` before the start, deployed and started at the start
//! (best-effort workspaces in the way suspended first), and checked in at
//! the end; suspended workspaces resume when room returns. Each round is
//! idempotent: whatever a failed or killed round left, the next one goes
//! on from the records.

use std::collections::HashSet;

use time::OffsetDateTime;
use vws_model::agreement::{Agreement, AgreementEvent, AgreementState, AtEnd, Slot};
use vws_model::records::HistoryAction;
use vws_model::{Identity, Placement, State};
use vws_store::{Change, Suspension, WorkspaceRecord};

use crate::agreements::rfc3339;
use crate::core::Service;
use crate::error::ServiceError;
use crate::lifecycle::is_account;
use crate::policy::{AccountsInTheWay, SuspendFirst};

pub use crate::agreements::SCHEDULER;

/// A start later than this after its time is reported as missed.
pub const ON_TIME: time::Duration = time::Duration::seconds(5);

fn scheduler() -> Identity {
    Identity {
        dn: SCHEDULER.into(),
        attributes: vec![("role".into(), "admin".into())],
    }
}

/// RAM a workspace holds while it runs or is paused on a node.
fn ram_of(r: &WorkspaceRecord) -> u64 {
    r.binding.ram.unwrap_or(r.description.hardware.ram.min.0)
}

fn holds_memory(r: &WorkspaceRecord) -> bool {
    r.placement == Placement::Host && matches!(r.state, State::Running | State::Paused)
}

impl Service {
    /// One round of the scheduler (the loop calls it every second; tests
    /// call it after moving the manual clock).
    pub async fn keep_agreements(&self) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let open = [
            AgreementState::Offered,
            AgreementState::Reserved,
            AgreementState::Active,
        ];
        for mut a in self.store.agreements_in(&open).await? {
            let kept = match a.state {
                AgreementState::Offered if a.offer_expires_at.is_some_and(|e| e <= now) => {
                    self.expire(&mut a, now).await
                }
                AgreementState::Reserved => self.keep_reserved(&mut a, now).await,
                AgreementState::Active if now >= a.end => self.end(&mut a, now).await,
                _ => Ok(()),
            };
            if let Err(e) = kept {
                self.note_failure(&a.id, now, &e).await;
            }
        }
        self.resume_suspended().await
    }

    async fn keep_reserved(
        &self,
        a: &mut Agreement,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        if now >= a.end {
            a.state = AgreementState::Ended;
            a.history.push(event(
                now,
                "missed-start",
                Some(format!(
                    "its whole time, {} to {}, passed while no scheduler ran; nothing was started",
                    rfc3339(a.start),
                    rfc3339(a.end)
                )),
            ));
            return Ok(self.store.update_agreements(&mut [a]).await?);
        }
        let stage_from =
            a.start - time::Duration::seconds(self.policy.agreements.stage_ahead as i64);
        if now < stage_from {
            return Ok(());
        }
        let staged = self.stage(a).await?;
        if staged > 0 {
            a.history.push(event(
                now,
                "stage",
                Some(format!(
                    "{staged} workspace{} staged on {}",
                    if staged == 1 { "" } else { "s" },
                    nodes_of(a)
                )),
            ));
            self.store.update_agreements(&mut [&mut *a]).await?;
        }
        let ahead = self.room_ahead();
        if now < a.start - ahead {
            return Ok(());
        }
        for node in a
            .slots
            .iter()
            .map(|s| s.node.clone())
            .collect::<HashSet<_>>()
        {
            self.make_room(a, &node).await?;
        }
        if now < a.start {
            return Ok(());
        }
        let who = scheduler();
        for id in a.workspaces().map(str::to_string).collect::<Vec<_>>() {
            let r = self.record(&id).await?;
            match r.state {
                State::Shutdown => {
                    self.start(&who, &id).await?;
                }
                State::Paused => {
                    self.unpause(&who, &id).await?;
                }
                _ => {}
            }
        }
        let late = now - a.start;
        if late > ON_TIME {
            a.history.push(event(
                now,
                "missed-start",
                Some(format!(
                    "due at {}, started {}s late (no scheduler was running at the start)",
                    rfc3339(a.start),
                    late.whole_seconds()
                )),
            ));
        }
        a.state = AgreementState::Active;
        a.history
            .push(event(now, "start", Some(format!("on {}", nodes_of(a)))));
        tracing::info!(id = %a.id, "agreement started");
        Ok(self.store.update_agreements(&mut [a]).await?)
    }

    /// How long before a start its room is made and kept.
    fn room_ahead(&self) -> time::Duration {
        time::Duration::seconds(self.policy.agreements.make_room_ahead as i64)
    }

    /// Deploys onto their reserved nodes the workspaces not there yet;
    /// returns how many were staged.
    async fn stage(&self, a: &Agreement) -> Result<usize, ServiceError> {
        let who = scheduler();
        let mut staged = 0;
        for slot in &a.slots {
            let Some(id) = &slot.workspace else { continue };
            let r = self.record(id).await?;
            if r.placement == Placement::Host && r.node.as_deref() != Some(slot.node.as_str()) {
                if r.state != State::Shutdown {
                    // Its owner runs it elsewhere: it goes on there.
                    continue;
                }
                self.undeploy(&who, id).await?;
            }
            let r = self.record(id).await?;
            if r.placement == Placement::Repository && r.lock_holder.is_none() {
                self.deploy_reserved(&who, id, slot).await?;
                staged += 1;
            }
        }
        Ok(staged)
    }

    /// Suspends best-effort workspaces on `node` until the agreement's
    /// slots there fit beside what else holds memory or is reserved now.
    async fn make_room(&self, a: &Agreement, node: &str) -> Result<(), ServiceError> {
        let Some(n) = self.store.node(node).await? else {
            return Ok(());
        };
        let capacity = n
            .report
            .ram_total
            .saturating_sub(crate::nodes::HOST_RESERVE);
        let on_node: Vec<WorkspaceRecord> = self
            .all_workspaces()
            .await?
            .into_iter()
            .filter(|r| r.node.as_deref() == Some(node) && holds_memory(r))
            .collect();
        let running: HashSet<&str> = on_node.iter().map(|r| r.id.as_str()).collect();
        let mine: HashSet<&str> = a.workspaces().collect();
        let need: u64 = a
            .slots
            .iter()
            .filter(|s| s.node == node)
            .filter(|s| !s.workspace.as_deref().is_some_and(|w| running.contains(w)))
            .map(|s| s.ram)
            .sum();
        let now = self.clock.now();
        let mut promised: HashSet<String> = HashSet::new();
        let mut others_pending = 0;
        for b in self
            .store
            .agreements_in(&[AgreementState::Reserved, AgreementState::Active])
            .await?
        {
            promised.extend(b.workspaces().map(str::to_string));
            if b.id == a.id || !(b.start - self.room_ahead() <= now && now < b.end) {
                continue;
            }
            others_pending += b
                .slots
                .iter()
                .filter(|s| s.node == node)
                .filter(|s| !s.workspace.as_deref().is_some_and(|w| running.contains(w)))
                .map(|s| s.ram)
                .sum::<u64>();
        }
        let mut used: u64 = on_node.iter().map(ram_of).sum();
        let order = self.policy.agreements.suspend_first;
        let spare_accounts = self.policy.agreements.accounts == AccountsInTheWay::Spare;
        let mut victims: Vec<&WorkspaceRecord> = on_node
            .iter()
            .filter(|r| !mine.contains(r.id.as_str()) && !promised.contains(&r.id))
            .filter(|r| !(spare_accounts && is_account(r)))
            .collect();
        victims.sort_by(|x, y| match order {
            SuspendFirst::Newest => y.created_at.cmp(&x.created_at),
            SuspendFirst::Oldest => x.created_at.cmp(&y.created_at),
            SuspendFirst::Smallest => ram_of(x).cmp(&ram_of(y)),
            SuspendFirst::Largest => ram_of(y).cmp(&ram_of(x)),
        });
        let mut victims = victims.into_iter();
        while used + others_pending + need > capacity {
            let Some(v) = victims.next() else {
                tracing::warn!(agreement = %a.id, %node, "no best-effort workspace is left to suspend; starting anyway");
                break;
            };
            let why = format!(
                "for agreement {}, which needs {} on {node} from {}; the policy suspends the {} first",
                a.id,
                vws_model::ByteSize(need).human(),
                rfc3339(a.start),
                order.as_str()
            );
            self.suspend(v, a, &why).await?;
            used -= ram_of(v);
        }
        Ok(())
    }

    /// Pauses a best-effort VM and checks it in with its memory (a
    /// dynamic account: stops and checks it in), recording why.
    async fn suspend(
        &self,
        v: &WorkspaceRecord,
        a: &Agreement,
        why: &str,
    ) -> Result<(), ServiceError> {
        let who = scheduler();
        let account = is_account(v);
        let mut r = v.clone();
        r.modified_at = self.clock.now();
        self.store
            .update_workspace(
                &mut r,
                Change {
                    action: HistoryAction::Suspend,
                    actor: SCHEDULER,
                    detail: Some(why.into()),
                },
            )
            .await?;
        // The suspension is recorded before anything moves: a round killed
        // half-way is finished by the next (the row keeps what it was).
        self.store
            .insert_suspension(&Suspension {
                workspace: v.id.clone(),
                agreement: a.id.clone(),
                node: v.node.clone().unwrap_or_default(),
                was: match (account, v.state) {
                    (true, _) => "stopped".into(),
                    (false, s) => s.as_str().into(),
                },
                at: self.clock.now(),
            })
            .await?;
        if account {
            self.stop(&who, &v.id).await?;
        } else if v.state == State::Running {
            self.pause(&who, &v.id).await?;
        }
        self.undeploy(&who, &v.id).await?;
        tracing::info!(id = %v.id, agreement = %a.id, "best-effort workspace suspended");
        Ok(())
    }

    /// Checks in an agreement's workspaces at its end, as its terms say.
    async fn end(&self, a: &mut Agreement, now: OffsetDateTime) -> Result<(), ServiceError> {
        let who = scheduler();
        for id in a.workspaces().map(str::to_string).collect::<Vec<_>>() {
            let Some(r) = self.store.workspace(&id).await? else {
                continue;
            };
            if r.placement != Placement::Host {
                continue;
            }
            let keep_memory = a.at_end == AtEnd::Suspend && !is_account(&r);
            match (r.state, keep_memory) {
                (State::Running, true) => {
                    self.pause(&who, &id).await?;
                }
                (State::Running | State::Paused, false) => {
                    self.stop(&who, &id).await?;
                }
                _ => {}
            }
            self.undeploy(&who, &id).await?;
        }
        a.state = AgreementState::Ended;
        a.history.push(event(
            now,
            "end",
            Some(match a.at_end {
                AtEnd::Stop => "workspaces stopped and checked in".into(),
                AtEnd::Suspend => "workspaces paused and checked in with their memory".into(),
            }),
        ));
        tracing::info!(id = %a.id, "agreement ended");
        Ok(self.store.update_agreements(&mut [a]).await?)
    }

    /// Room on `node` for best-effort work now: its capacity less what
    /// holds memory there and what agreements in their time reserve.
    async fn best_effort_room(
        &self,
        node: &str,
        all: &[WorkspaceRecord],
    ) -> Result<u64, ServiceError> {
        let Some(n) = self.store.node(node).await? else {
            return Ok(0);
        };
        let used: u64 = all
            .iter()
            .filter(|r| r.node.as_deref() == Some(node) && holds_memory(r))
            .map(ram_of)
            .sum();
        Ok(n.report
            .ram_total
            .saturating_sub(crate::nodes::HOST_RESERVE)
            .saturating_sub(used)
            .saturating_sub(self.reserved_pending(node).await?))
    }

    /// Resumes suspended workspaces where there is room, on their own node
    /// first, longest suspended first.
    async fn resume_suspended(&self) -> Result<(), ServiceError> {
        let suspended = self.store.suspensions().await?;
        if suspended.is_empty() {
            return Ok(());
        }
        let who = scheduler();
        let mut all = self.all_workspaces().await?;
        let nodes: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.status == "up")
            .map(|n| n.record.name)
            .collect();
        for s in suspended {
            let Some(r) = all.iter().find(|r| r.id == s.workspace).cloned() else {
                self.store.remove_suspension(&s.workspace).await?;
                continue;
            };
            if r.placement == Placement::Host && r.state == State::Running {
                // Its owner resumed it meanwhile.
                self.store.remove_suspension(&s.workspace).await?;
                continue;
            }
            if r.placement != Placement::Repository || r.lock_holder.is_some() {
                // Its suspension is under way (or was cut short: the next
                // agreement's round finishes it).
                continue;
            }
            let mut order: Vec<&String> = nodes.iter().filter(|n| **n == s.node).collect();
            order.extend(nodes.iter().filter(|n| **n != s.node));
            for node in order {
                if self.best_effort_room(node, &all).await? < ram_of(&r) {
                    continue;
                }
                match self.resume(&who, &r, &s, node).await {
                    Ok(()) => {
                        all = self.all_workspaces().await?;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(id = %r.id, %node, error = %e, "could not resume a suspended workspace there")
                    }
                }
            }
        }
        Ok(())
    }

    async fn resume(
        &self,
        who: &Identity,
        r: &WorkspaceRecord,
        s: &Suspension,
        node: &str,
    ) -> Result<(), ServiceError> {
        let mut note = r.clone();
        note.modified_at = self.clock.now();
        self.store
            .update_workspace(
                &mut note,
                Change {
                    action: HistoryAction::Resume,
                    actor: SCHEDULER,
                    detail: Some(format!(
                        "on {node}, after agreement {} (suspended since {})",
                        s.agreement,
                        rfc3339(s.at)
                    )),
                },
            )
            .await?;
        self.deploy(who, &r.id, Some(node)).await?;
        match s.was.as_str() {
            "running" => {
                self.unpause(who, &r.id).await?;
            }
            "stopped" => {
                self.start(who, &r.id).await?;
            }
            _ => {}
        }
        self.store.remove_suspension(&r.id).await?;
        tracing::info!(id = %r.id, %node, "suspended workspace resumed");
        Ok(())
    }

    /// Records a round's failure on the agreement once (the next rounds
    /// retry without repeating it).
    async fn note_failure(&self, id: &str, now: OffsetDateTime, e: &ServiceError) {
        tracing::warn!(agreement = %id, error = %e, "could not keep an agreement this round");
        let Ok(Some(mut a)) = self.store.agreement(id).await else {
            return;
        };
        let message = e.to_string();
        if a.history.last().and_then(|h| h.detail.as_deref()) == Some(message.as_str()) {
            return;
        }
        a.history.push(event(now, "retry", Some(message)));
        let _ = self.store.update_agreements(&mut [&mut a]).await;
    }
}

fn event(at: OffsetDateTime, action: &str, detail: Option<String>) -> AgreementEvent {
    AgreementEvent {
        at,
        action: action.into(),
        actor: SCHEDULER.into(),
        detail,
    }
}

fn nodes_of(a: &Agreement) -> String {
    let mut names: Vec<&str> = a.slots.iter().map(|s: &Slot| s.node.as_str()).collect();
    names.dedup();
    names.join(", ")
}

/// Runs the scheduler every `every` until `shutdown` resolves, on one
/// replica at a time.
pub async fn run_scheduler(
    service: std::sync::Arc<Service>,
    every: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::singleton::run_led(
        service,
        "agreements",
        every,
        shutdown,
        |service| async move {
            if let Err(e) = service.keep_agreements().await {
                tracing::warn!(error = %e, "scheduler round failed");
            }
        },
    )
    .await
}
