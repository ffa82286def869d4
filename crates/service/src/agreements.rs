//! Agreements (docs/agreements.md): offers of capacity for a description,
//! now or later, for a while; their acceptance as binding reservations;
//! renegotiation and cancellation. Keeping them (staging, starting,
//! ending, suspending best-effort work) is `scheduler.rs`'s.
//!
//! The capacity model: a node offers `ram_total` less the host's reserve;
//! every agreement holding capacity (an open offer, a reservation, an
//! active agreement) takes its slots' RAM on their nodes for its time.
//! Workspaces without an agreement are best-effort: they are not counted
//! here, because they are suspended when a reservation needs the room.

use std::collections::HashSet;

use time::OffsetDateTime;
use vws_model::agreement::{
    Agreement, AgreementEvent, AgreementRequest, AgreementState, Renegotiation, Slot, Terms,
};
use vws_model::{Category, Description, Form, Identity, Placement, State};

use crate::core::Service;
use crate::error::ServiceError;

/// A node as the planner sees it.
#[derive(Clone, Debug)]
pub(crate) struct NodeCapacity {
    pub name: String,
    /// RAM it offers to workspaces.
    pub ram: u64,
    pub cores: u32,
    pub accounts: bool,
    /// Holds the image already (preferred).
    pub has_image: bool,
}

/// What is asked, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Ask {
    pub count: u32,
    pub cpus: (u32, u32),
    pub ram: (u64, u64),
    pub account: bool,
    pub earliest: OffsetDateTime,
    pub latest: OffsetDateTime,
    pub duration: time::Duration,
}

/// Why no offer: the reason, and the earliest start that could be met.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Refusal {
    pub reason: String,
    pub earliest: Option<OffsetDateTime>,
}

/// The RAM `held` takes on `node` at its peak within `[from, to)`.
fn peak(
    held: &[Agreement],
    extra: &[(String, u64)],
    node: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> u64 {
    let mut points = vec![from];
    points.extend(
        held.iter()
            .filter(|a| a.start > from && a.start < to)
            .map(|a| a.start),
    );
    let mine: u64 = extra
        .iter()
        .filter(|(n, _)| n == node)
        .map(|(_, r)| r)
        .sum();
    points
        .into_iter()
        .map(|p| {
            held.iter()
                .filter(|a| a.start <= p && p < a.end)
                .map(|a| a.ram_on(node))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
        + mine
}

/// Slots for every instance at `start`, or none.
fn place_at(
    nodes: &[NodeCapacity],
    held: &[Agreement],
    ask: &Ask,
    start: OffsetDateTime,
) -> Option<Vec<Slot>> {
    let end = start + ask.duration;
    let mut taken: Vec<(String, u64)> = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..ask.count {
        let best = nodes
            .iter()
            .filter(|n| !ask.account || n.accounts)
            .filter(|n| n.cores >= ask.cpus.0)
            .map(|n| {
                (
                    n,
                    n.ram
                        .saturating_sub(peak(held, &taken, &n.name, start, end)),
                )
            })
            .filter(|(_, room)| *room >= ask.ram.0)
            .max_by_key(|(n, room)| (n.has_image, *room, std::cmp::Reverse(n.name.clone())))?;
        let (node, room) = best;
        let ram = ask.ram.1.min(room);
        taken.push((node.name.clone(), ram));
        slots.push(Slot {
            node: node.name.clone(),
            cpus: ask.cpus.1.min(node.cores),
            ram,
            workspace: None,
        });
    }
    Some(slots)
}

/// The earliest start in the ask's window at which every instance fits,
/// with its slots; or a refusal naming the earliest start past the window
/// that would fit. Starts worth trying are the window's first moment and
/// every moment a held agreement ends.
pub(crate) fn plan(
    nodes: &[NodeCapacity],
    held: &[Agreement],
    ask: &Ask,
) -> Result<(OffsetDateTime, Vec<Slot>), Refusal> {
    let mut starts = vec![ask.earliest];
    starts.extend(held.iter().map(|a| a.end).filter(|e| *e > ask.earliest));
    starts.sort();
    starts.dedup();
    for s in starts {
        if let Some(slots) = place_at(nodes, held, ask, s) {
            if s <= ask.latest {
                return Ok((s, slots));
            }
            return Err(Refusal {
                reason: format!(
                    "the capacity for {} is reserved in the window asked for",
                    what(ask)
                ),
                earliest: Some(s),
            });
        }
    }
    Err(Refusal {
        reason: if nodes.is_empty() {
            "no node is up to reserve on".into()
        } else {
            format!("no node could ever hold {}", what(ask))
        },
        earliest: None,
    })
}

fn what(ask: &Ask) -> String {
    format!(
        "{} workspace{} of {} and {} cpus",
        ask.count,
        if ask.count == 1 { "" } else { "s" },
        vws_model::ByteSize(ask.ram.0).human(),
        ask.cpus.0
    )
}

/// A time of the terms, to the millisecond (the precision records keep).
fn time_term(what: &str, text: &str) -> Result<OffsetDateTime, ServiceError> {
    let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
        |e| {
            ServiceError::InvalidTerms(format!(
                "terms.{what}: {text:?} is not an RFC 3339 time ({e})"
            ))
        },
    )?;
    Ok(t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .expect("a millisecond is a valid nanosecond"))
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An entry of an agreement's history.
fn event(at: OffsetDateTime, action: &str, actor: &str, detail: Option<String>) -> AgreementEvent {
    AgreementEvent {
        at,
        action: action.into(),
        actor: actor.into(),
        detail,
    }
}

fn new_id() -> String {
    format!("ag-{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// The actor the scheduler's actions are recorded under.
pub const SCHEDULER: &str = "scheduler";

impl Service {
    /// The nodes that are up, as capacity.
    pub(crate) async fn capacities(
        &self,
        image: Option<&str>,
    ) -> Result<Vec<NodeCapacity>, ServiceError> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.status == "up")
            .map(|n| NodeCapacity {
                ram: n
                    .record
                    .report
                    .ram_total
                    .saturating_sub(crate::nodes::HOST_RESERVE),
                cores: n.record.report.cores,
                accounts: n.record.report.accounts.is_some(),
                has_image: image.is_some_and(|i| n.record.report.images.iter().any(|c| c == i)),
                name: n.record.name,
            })
            .collect())
    }

    /// The terms' window, checked: a start in the past, a window that ends
    /// before it begins, no duration or one past the policy's longest
    /// lifetime are refused.
    fn window(
        &self,
        who: &Identity,
        terms: &Terms,
        now: OffsetDateTime,
    ) -> Result<(OffsetDateTime, OffsetDateTime, time::Duration), ServiceError> {
        let earliest = match terms.start.as_deref() {
            None | Some("now") => now,
            Some(t) => {
                let t = time_term("start", t)?;
                // A second's grace for a client that sends "now" as a time.
                if t < now - time::Duration::seconds(1) {
                    return Err(ServiceError::InvalidTerms(format!(
                        "terms.start: {} is in the past (it is {} now)",
                        rfc3339(t),
                        rfc3339(now)
                    )));
                }
                t.max(now)
            }
        };
        let latest = match terms.latest_start.as_deref() {
            None => earliest,
            Some(t) => time_term("latest_start", t)?,
        };
        if latest < earliest {
            return Err(ServiceError::InvalidTerms(format!(
                "terms.latest_start: {} is before the start, {}",
                rfc3339(latest),
                rfc3339(earliest)
            )));
        }
        if terms.duration == 0 {
            return Err(ServiceError::InvalidTerms(
                "terms.duration: must be at least 1 second".into(),
            ));
        }
        let limits = self.policy.limits_for(&who.dn);
        if terms.duration > limits.max_lifetime {
            return Err(ServiceError::Policy(format!(
                "terms.duration: {}s is longer than the {}s allowed for {}",
                terms.duration, limits.max_lifetime, who.dn
            )));
        }
        Ok((
            earliest,
            latest,
            time::Duration::seconds(terms.duration as i64),
        ))
    }

    /// Answers a request for capacity with an offer valid for the policy's
    /// `offer_valid_for`, or refuses it (409 `no_capacity`, with the
    /// earliest start that could be met).
    pub(crate) async fn offer(
        &self,
        who: &Identity,
        req: AgreementRequest,
    ) -> Result<Agreement, ServiceError> {
        let now = self.clock.now();
        let (description, workspace) = match (&req.description, &req.workspace) {
            (Some(d), None) => {
                let text = serde_json::to_string(d).map_err(anyhow::Error::from)?;
                let d = vws_model::parse(&text, Form::Json)?.without_server_fields();
                vws_model::validate::validate(&d, Form::Json)?;
                (d, None)
            }
            (None, Some(id)) => {
                let r = self.visible(who, id).await?;
                if r.placement != Placement::Repository || r.lock_holder.is_some() {
                    return Err(ServiceError::Conflict(format!(
                        "workspace {id} is deployed; undeploy it before reserving capacity for it"
                    )));
                }
                if req.count.is_some_and(|c| c != 1) {
                    return Err(ServiceError::InvalidTerms(
                        "count: an agreement for an existing workspace is for that one workspace"
                            .into(),
                    ));
                }
                (r.description, Some(r.id))
            }
            _ => {
                return Err(ServiceError::InvalidTerms(
                    "an agreement is for a description or for a workspace: give exactly one".into(),
                ))
            }
        };
        let count = req.count.unwrap_or(1);
        let (earliest, latest, duration) = self.window(who, &req.terms, now)?;
        if let Some(id) = &workspace {
            let r = self.visible(who, id).await?;
            if r.terminates_at.is_some_and(|t| t < earliest + duration) {
                return Err(ServiceError::Conflict(format!(
                    "workspace {id} terminates before the agreement would end; renew it first"
                )));
            }
        }
        self.check_agreement_policy(who, &description, count, workspace.is_some())
            .await?;
        let ask = Ask {
            count,
            cpus: (description.hardware.cpus.min, description.hardware.cpus.max),
            ram: (
                description.hardware.ram.min.0,
                description.hardware.ram.max.0,
            ),
            account: description.category == Category::DynamicAccount,
            earliest,
            latest,
            duration,
        };
        let image = match description
            .software
            .image
            .as_deref()
            .and_then(|i| i.parse::<vws_model::ImageRef>().ok())
        {
            Some(i) => self.store.image(&i).await?.map(|i| i.id),
            None => None,
        };
        let nodes = self.capacities(image.as_deref()).await?;
        let expires = now + time::Duration::seconds(self.policy.agreements.offer_valid_for as i64);
        let description_json = serde_json::from_str(&vws_model::write(&description, Form::Json))
            .map_err(anyhow::Error::from)?;
        let offer = Agreement {
            id: new_id(),
            owner: who.dn.clone(),
            state: AgreementState::Offered,
            description: description_json,
            workspace,
            slots: Vec::new(),
            start: earliest,
            end: earliest + duration,
            at_end: req.terms.at_end,
            offer_expires_at: Some(expires),
            replaces: None,
            history: Vec::new(),
            version: 1,
        };
        self.insert_offer(offer, &nodes, &ask, None, &who.dn, now)
            .await
    }

    /// Plans `offer` against what is held now and inserts it, under the
    /// ledger's lock (`replacing`'s own capacity is not in the way).
    async fn insert_offer(
        &self,
        offer: Agreement,
        nodes: &[NodeCapacity],
        ask: &Ask,
        replacing: Option<&Agreement>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Agreement, ServiceError> {
        let plan_offer = |held: &[Agreement]| {
            let held: Vec<Agreement> = held
                .iter()
                .filter(|a| Some(a.id.as_str()) != replacing.map(|r| r.id.as_str()))
                .filter(|a| {
                    a.state != AgreementState::Offered
                        || a.offer_expires_at.is_some_and(|e| e > now)
                })
                .cloned()
                .collect();
            let (start, slots) = plan(nodes, &held, ask)?;
            let mut offer = offer;
            offer.start = start;
            offer.end = start + ask.duration;
            offer.slots = slots;
            if let Some(r) = replacing.filter(|r| r.state == AgreementState::Active) {
                // The running ones keep their nodes: slots pair by node.
                keep_nodes(&mut offer.slots, &r.slots);
            }
            offer.history = vec![event(
                now,
                "offer",
                actor,
                Some(format!(
                    "{} on {}, from {} to {}; valid until {}",
                    what(ask),
                    offer
                        .slots
                        .iter()
                        .map(|s| s.node.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    rfc3339(offer.start),
                    rfc3339(offer.end),
                    offer.offer_expires_at.map(rfc3339).unwrap_or_default()
                )),
            )];
            Ok(offer)
        };
        // Candidate starts reach past the window: every agreement ending
        // after the earliest start is read.
        let far = ask.earliest + time::Duration::days(36500);
        match self
            .store
            .insert_agreement_planned(ask.earliest, far, plan_offer)
            .await?
        {
            Ok(offer) => {
                tracing::info!(id = %offer.id, owner = %offer.owner, start = %rfc3339(offer.start), "agreement offered");
                Ok(offer)
            }
            Err(Refusal { reason, earliest }) => Err(ServiceError::NoCapacity {
                message: reason,
                earliest_start: earliest.map(rfc3339),
            }),
        }
    }

    /// What the policy says about `count` workspaces of `d` for `who`:
    /// the category allowed, and the quota with the open offers and
    /// reservations counted.
    async fn check_agreement_policy(
        &self,
        who: &Identity,
        d: &Description,
        count: u32,
        existing: bool,
    ) -> Result<(), ServiceError> {
        let limits = self.policy.limits_for(&who.dn);
        limits
            .check_category(d.category, &who.dn)
            .map_err(ServiceError::Policy)?;
        if count == 0 {
            return Err(ServiceError::InvalidTerms(
                "count: must be at least 1".into(),
            ));
        }
        if existing {
            return Ok(());
        }
        let (have, ram) = self.store.owner_usage(&who.dn).await?;
        // Open offers are promised too (reservations have their
        // workspaces already, and those are counted above).
        let now = self.clock.now();
        let offered: Vec<Agreement> = self
            .store
            .agreements_of(Some(&who.dn))
            .await?
            .into_iter()
            .filter(|a| {
                a.state == AgreementState::Offered
                    && a.offer_expires_at.is_some_and(|e| e > now)
                    && a.workspace.is_none()
            })
            .collect();
        let offered_count: u64 = offered.iter().map(|a| a.slots.len() as u64).sum();
        let offered_ram: u64 = offered.iter().flat_map(|a| &a.slots).map(|s| s.ram).sum();
        let wanted = count as u64;
        if have + offered_count + wanted > limits.max_workspaces {
            return Err(ServiceError::Policy(format!(
                "{} has {have} workspaces and {offered_count} more on offer; {wanted} more would pass the limit of {}",
                who.dn, limits.max_workspaces
            )));
        }
        let ram_wanted = wanted * d.hardware.ram.max.0;
        if ram + offered_ram + ram_wanted > limits.max_total_ram.0 {
            return Err(ServiceError::Policy(format!(
                "{} would use {} of RAM with these workspaces and what is on offer; the limit is {}",
                who.dn,
                vws_model::ByteSize(ram + offered_ram + ram_wanted).human(),
                limits.max_total_ram.human()
            )));
        }
        Ok(())
    }

    /// An agreement the caller may see (others' are not found).
    pub(crate) async fn agreement(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Agreement, ServiceError> {
        match self.store.agreement(id).await? {
            Some(a) if a.owner == who.dn || who.is_admin() => Ok(a),
            _ => Err(ServiceError::NotFound(format!("agreement {id} not found"))),
        }
    }

    /// The caller's agreements (everyone's for an administrator).
    pub(crate) async fn agreements(&self, who: &Identity) -> Result<Vec<Agreement>, ServiceError> {
        let owner = (!who.is_admin()).then_some(who.dn.as_str());
        Ok(self.store.agreements_of(owner).await?)
    }

    /// A new offer against an existing agreement: a later or earlier
    /// start (before it has started), a longer or shorter duration, more
    /// or fewer workspaces. The agreement holds until the offer is
    /// accepted.
    pub(crate) async fn renegotiate(
        &self,
        who: &Identity,
        id: &str,
        change: Renegotiation,
    ) -> Result<Agreement, ServiceError> {
        let now = self.clock.now();
        let old = self.agreement(who, id).await?;
        if !matches!(old.state, AgreementState::Reserved | AgreementState::Active) {
            return Err(ServiceError::Conflict(format!(
                "agreement {id} is {}; only a reservation or an active agreement can be renegotiated",
                old.state
            )));
        }
        let active = old.state == AgreementState::Active;
        if active && (change.start.is_some() || change.latest_start.is_some()) {
            return Err(ServiceError::Conflict(format!(
                "agreement {id} has started; its start cannot move (its duration and count can)"
            )));
        }
        let count = change.count.unwrap_or(old.slots.len() as u32);
        if old.workspace.is_some() && count != 1 {
            return Err(ServiceError::InvalidTerms(
                "count: an agreement for an existing workspace is for that one workspace".into(),
            ));
        }
        let duration = change
            .duration
            .unwrap_or_else(|| (old.end - old.start).whole_seconds().max(1) as u64);
        let terms = Terms {
            start: match (&change.start, active) {
                (Some(s), _) => Some(s.clone()),
                (None, true) => None,
                (None, false) => Some(rfc3339(old.start.max(now))),
            },
            latest_start: change.latest_start.clone(),
            duration,
            at_end: old.at_end,
        };
        let (mut earliest, mut latest, duration) = self.window(who, &terms, now)?;
        if active {
            // Its start stays: the new end is counted from it.
            earliest = old.start;
            latest = old.start;
            if old.start + duration <= now {
                return Err(ServiceError::InvalidTerms(format!(
                    "terms.duration: an end at {} is already past",
                    rfc3339(old.start + duration)
                )));
            }
        }
        let d: Description = vws_model::parse(&old.description.to_string(), Form::Json)?;
        let grown = count.saturating_sub(old.slots.len() as u32);
        if grown > 0 {
            self.check_agreement_policy(who, &d, grown, false).await?;
        }
        let ask = Ask {
            count,
            cpus: (d.hardware.cpus.min, d.hardware.cpus.max),
            ram: (d.hardware.ram.min.0, d.hardware.ram.max.0),
            account: d.category == Category::DynamicAccount,
            earliest,
            latest,
            duration,
        };
        let mut nodes = self.capacities(None).await?;
        if active {
            // Running workspaces stay where they are.
            let on: HashSet<&str> = old.slots.iter().map(|s| s.node.as_str()).collect();
            nodes.retain(|n| on.contains(n.name.as_str()));
        }
        let offer = Agreement {
            id: new_id(),
            owner: old.owner.clone(),
            state: AgreementState::Offered,
            description: old.description.clone(),
            workspace: old.workspace.clone(),
            slots: Vec::new(),
            start: earliest,
            end: earliest + duration,
            at_end: old.at_end,
            offer_expires_at: Some(
                now + time::Duration::seconds(self.policy.agreements.offer_valid_for as i64),
            ),
            replaces: Some(old.id.clone()),
            history: Vec::new(),
            version: 1,
        };
        self.insert_offer(offer, &nodes, &ask, Some(&old), &who.dn, now)
            .await
    }

    /// Accepts an offer: a binding reservation. Its workspaces are made
    /// now (so quotas count them from now on), in the repository until
    /// the start; a renegotiation's take over the ones it replaces.
    pub(crate) async fn accept_agreement(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Agreement, ServiceError> {
        let now = self.clock.now();
        let mut a = self.agreement(who, id).await?;
        if a.state != AgreementState::Offered {
            return Err(ServiceError::Conflict(format!(
                "agreement {id} is {}; only an offer can be accepted",
                a.state
            )));
        }
        if let Some(e) = a.offer_expires_at.filter(|e| *e <= now) {
            self.expire(&mut a, now).await?;
            return Err(ServiceError::Conflict(format!(
                "the offer {id} expired at {}; ask for a new one",
                rfc3339(e)
            )));
        }
        let mut old = match &a.replaces {
            Some(r) => {
                let old = self.store.agreement(r).await?.ok_or_else(|| {
                    ServiceError::Conflict(format!(
                        "agreement {r} that this offer renegotiates is gone"
                    ))
                })?;
                if !matches!(old.state, AgreementState::Reserved | AgreementState::Active) {
                    return Err(ServiceError::Conflict(format!(
                        "agreement {r} that this offer renegotiates is {} now",
                        old.state
                    )));
                }
                Some(old)
            }
            None => None,
        };
        let owner = Identity::new(a.owner.clone());
        // Workspaces: the replaced agreement's first, then the existing
        // one named, then new ones.
        let mut inherited: Vec<String> = old
            .as_ref()
            .map(|o| o.workspaces().map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(w) = &a.workspace {
            if inherited.is_empty() {
                inherited.push(w.clone());
            }
        }
        let surplus: Vec<String> = inherited.split_off(inherited.len().min(a.slots.len()));
        let mut made = Vec::new();
        let d: Description = vws_model::parse(&a.description.to_string(), Form::Json)?;
        for slot in a.slots.iter_mut() {
            slot.workspace = match inherited.is_empty() {
                false => Some(inherited.remove(0)),
                true => match self.create(&owner, d.clone(), Form::Json, None).await {
                    Ok(ws) => {
                        made.push(ws.record.id.clone());
                        Some(ws.record.id)
                    }
                    Err(e) => {
                        for m in &made {
                            let _ = self.destroy(&owner, m).await;
                        }
                        return Err(e);
                    }
                },
            };
        }
        a.state = AgreementState::Reserved;
        a.offer_expires_at = None;
        a.history.push(event(
            now,
            "accept",
            &who.dn,
            Some(format!(
                "workspaces {}",
                a.workspaces().collect::<Vec<_>>().join(", ")
            )),
        ));
        let result = match old.as_mut() {
            Some(o) => {
                if o.state == AgreementState::Active {
                    a.state = AgreementState::Active;
                }
                o.state = AgreementState::Replaced;
                o.history.push(event(
                    now,
                    "replaced",
                    &who.dn,
                    Some(format!("by {}", a.id)),
                ));
                a.history
                    .push(event(now, "replaces", &who.dn, Some(o.id.clone())));
                self.store.update_agreements(&mut [&mut a, o]).await
            }
            None => self.store.update_agreements(&mut [&mut a]).await,
        };
        if let Err(e) = result {
            for m in &made {
                let _ = self.destroy(&owner, m).await;
            }
            return Err(e.into());
        }
        for s in &surplus {
            if let Err(e) = self.destroy(&owner, s).await {
                tracing::warn!(workspace = %s, error = %e, "could not destroy a workspace the renegotiation gave up");
            }
        }
        self.hold_until_end(&a).await?;
        tracing::info!(id = %a.id, owner = %a.owner, "agreement accepted");
        Ok(a)
    }

    /// The agreement's workspaces terminate no earlier than its end, and
    /// then live their own lifetime after it (to fetch results).
    async fn hold_until_end(&self, a: &Agreement) -> Result<(), ServiceError> {
        for id in a.workspaces() {
            let Some(mut r) = self.store.workspace(id).await? else {
                continue;
            };
            let limits = self.policy.limits_for(&r.owner);
            let after = r.description.life_cycle.unwrap_or(limits.default_lifetime);
            let until = a.end + time::Duration::seconds(after as i64);
            if r.terminates_at.is_some_and(|t| t >= until) {
                continue;
            }
            r.terminates_at = Some(until);
            r.modified_at = self.clock.now();
            self.store
                .update_workspace(
                    &mut r,
                    vws_store::Change {
                        action: vws_model::records::HistoryAction::Renew,
                        actor: SCHEDULER,
                        detail: Some(format!(
                            "held for agreement {} until {}",
                            a.id,
                            rfc3339(until)
                        )),
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// Cancels: an offer is rejected, a reservation or an active agreement
    /// releases its capacity. Its workspaces stay the owner's, as
    /// best-effort work.
    pub(crate) async fn cancel_agreement(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Agreement, ServiceError> {
        let now = self.clock.now();
        let mut a = self.agreement(who, id).await?;
        let action = match a.state {
            AgreementState::Offered => "reject",
            AgreementState::Reserved | AgreementState::Active => "cancel",
            s => {
                return Err(ServiceError::Conflict(format!(
                    "agreement {id} is {s}; there is nothing to cancel"
                )))
            }
        };
        a.state = AgreementState::Cancelled;
        a.history.push(event(now, action, &who.dn, None));
        self.store.update_agreements(&mut [&mut a]).await?;
        Ok(a)
    }

    /// Marks an offer expired.
    pub(crate) async fn expire(
        &self,
        a: &mut Agreement,
        now: OffsetDateTime,
    ) -> Result<(), ServiceError> {
        a.state = AgreementState::Expired;
        a.history.push(event(now, "expire", SCHEDULER, None));
        Ok(self.store.update_agreements(&mut [a]).await?)
    }

    /// RAM reserved on `node` for agreements in their time (or starting
    /// within the policy's `make_room_ahead`) whose workspaces do not hold
    /// it yet (not running or paused there): ordinary placement, and the
    /// resumption of suspended work, leave it alone.
    pub(crate) async fn reserved_pending(&self, node: &str) -> Result<u64, ServiceError> {
        Ok(self
            .reserved_pending_by_node()
            .await?
            .get(node)
            .copied()
            .unwrap_or(0))
    }

    /// [`Service::reserved_pending`] of every node at once (one read of the
    /// agreements, whatever the number of nodes): what placement asks.
    pub(crate) async fn reserved_pending_by_node(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, ServiceError> {
        let now = self.clock.now();
        let ahead = time::Duration::seconds(self.policy.agreements.make_room_ahead as i64);
        let mut pending = std::collections::BTreeMap::new();
        for a in self
            .store
            .agreements_holding(now, now + ahead + time::Duration::milliseconds(1))
            .await?
        {
            if a.state == AgreementState::Offered {
                continue;
            }
            for s in &a.slots {
                let held = match &s.workspace {
                    Some(w) => self.store.workspace(w).await?.is_some_and(|r| {
                        r.node.as_deref() == Some(s.node.as_str())
                            && matches!(r.state, State::Running | State::Paused)
                    }),
                    None => false,
                };
                if !held {
                    *pending.entry(s.node.clone()).or_insert(0) += s.ram;
                }
            }
        }
        Ok(pending)
    }
}

/// Pairs new slots with old ones on the same node, so a running
/// workspace keeps its node through a renegotiation.
fn keep_nodes(new: &mut [Slot], old: &[Slot]) {
    let mut olds: Vec<&Slot> = old.iter().collect();
    let mut ordered: Vec<Slot> = Vec::new();
    let mut rest: Vec<Slot> = new.to_vec();
    while let Some(o) = (!olds.is_empty()).then(|| olds.remove(0)) {
        if let Some(i) = rest.iter().position(|s| s.node == o.node) {
            ordered.push(rest.remove(i));
        }
    }
    ordered.extend(rest);
    new.clone_from_slice(&ordered);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    fn node(name: &str, gib: u64) -> NodeCapacity {
        NodeCapacity {
            name: name.into(),
            ram: gib << 30,
            cores: 4,
            accounts: false,
            has_image: false,
        }
    }

    fn held(node: &str, gib: u64, from: i64, to: i64) -> Agreement {
        Agreement {
            id: format!("ag-{from}-{to}"),
            owner: "o".into(),
            state: AgreementState::Reserved,
            description: serde_json::Value::Null,
            workspace: None,
            slots: vec![Slot {
                node: node.into(),
                cpus: 1,
                ram: gib << 30,
                workspace: None,
            }],
            start: t(from),
            end: t(to),
            at_end: Default::default(),
            offer_expires_at: None,
            replaces: None,
            history: vec![],
            version: 1,
        }
    }

    fn ask(count: u32, gib: u64, earliest: i64, latest: i64, secs: i64) -> Ask {
        Ask {
            count,
            cpus: (1, 1),
            ram: (gib << 30, gib << 30),
            account: false,
            earliest: t(earliest),
            latest: t(latest),
            duration: time::Duration::seconds(secs),
        }
    }

    #[test]
    fn fits_beside_what_is_held() {
        let nodes = [node("a", 4)];
        let (start, slots) = plan(&nodes, &[held("a", 2, 0, 100)], &ask(1, 2, 0, 0, 50)).unwrap();
        assert_eq!((start, slots.len(), slots[0].ram), (t(0), 1, 2 << 30));
    }

    #[test]
    fn over_commit_is_refused_with_the_earliest_start() {
        let nodes = [node("a", 4)];
        let h = [held("a", 3, 0, 100), held("a", 3, 100, 150)];
        let r = plan(&nodes, &h, &ask(1, 2, 0, 10, 50)).unwrap_err();
        assert_eq!(r.earliest, Some(t(150)));
        // In a window that reaches it, that start is offered.
        let (start, _) = plan(&nodes, &h, &ask(1, 2, 0, 200, 50)).unwrap();
        assert_eq!(start, t(150));
    }

    #[test]
    fn a_reservation_that_starts_inside_counts_at_its_peak() {
        let nodes = [node("a", 4)];
        // Free now, but from 30 on 3 GiB are taken: 2 GiB for 0..50 do not fit.
        let r = plan(&nodes, &[held("a", 3, 30, 60)], &ask(1, 2, 0, 0, 50)).unwrap_err();
        assert_eq!(r.earliest, Some(t(60)));
    }

    #[test]
    fn instances_spread_over_nodes_and_never_fit_is_said() {
        let nodes = [node("a", 2), node("b", 2)];
        let (_, slots) = plan(&nodes, &[], &ask(2, 2, 0, 0, 10)).unwrap();
        let on: HashSet<&str> = slots.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(on.len(), 2);
        let r = plan(&nodes, &[], &ask(1, 3, 0, 0, 10)).unwrap_err();
        assert_eq!(r.earliest, None);
        assert!(r.reason.contains("no node could ever hold"), "{}", r.reason);
    }
}
