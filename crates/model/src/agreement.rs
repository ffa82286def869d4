//! Agreements (paper §3.1's negotiation, in SNAP's terms): a client asks
//! for capacity for a description, now or later, for a while; the service
//! answers with an offer (which nodes, what is bound from the ranges, when)
//! or a refusal naming the earliest start it could meet; accepting the
//! offer makes it a binding reservation that placement honours.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What a client asks for: `POST /v1/agreements`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgreementRequest {
    /// The workspace description (JSON form), for new workspaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<serde_json::Value>,
    /// Or an existing workspace of the caller's, in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// How many workspaces (1 unless given; 1 with `workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The terms.
    pub terms: Terms,
}

/// When and for how long.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Terms {
    /// `now`, or the earliest acceptable start (RFC 3339). Default: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// The latest acceptable start (RFC 3339): with `start`, a window the
    /// service may start in. Default: exactly `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_start: Option<String>,
    /// How long the workspaces run, in seconds.
    pub duration: u64,
    /// What happens at the end (default `stop`).
    #[serde(default)]
    pub at_end: AtEnd,
}

/// What an agreement's workspaces become when its time is up.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AtEnd {
    /// Stopped and checked in (the disk goes back to the repository).
    #[default]
    Stop,
    /// Paused and checked in with its memory: it resumes where it was.
    Suspend,
}

/// What a renegotiation asks to change (`POST /v1/agreements/{id}/offers`):
/// each field left out keeps the agreement's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Renegotiation {
    /// A new earliest start (not once the agreement has started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// A new latest start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_start: Option<String>,
    /// A new duration, from the (new) start: longer extends, shorter shrinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// A new count (fewer destroys the last workspaces at acceptance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

/// Where an agreement is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AgreementState {
    /// An offer, holding its capacity until it expires.
    Offered,
    /// Accepted: capacity bound, the workspaces made, waiting for the start.
    Reserved,
    /// Its workspaces run.
    Active,
    /// Its time is up and its workspaces were checked in.
    Ended,
    /// Cancelled by its owner (an offer: rejected).
    Cancelled,
    /// An offer not accepted in time.
    Expired,
    /// Replaced by an accepted renegotiation.
    Replaced,
}

impl AgreementState {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgreementState::Offered => "offered",
            AgreementState::Reserved => "reserved",
            AgreementState::Active => "active",
            AgreementState::Ended => "ended",
            AgreementState::Cancelled => "cancelled",
            AgreementState::Expired => "expired",
            AgreementState::Replaced => "replaced",
        }
    }

    /// Whether it holds capacity.
    pub fn holds_capacity(self) -> bool {
        matches!(
            self,
            AgreementState::Offered | AgreementState::Reserved | AgreementState::Active
        )
    }
}

impl std::fmt::Display for AgreementState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance's share of an agreement: the node it is reserved on and
/// what was bound there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Slot {
    /// The node.
    pub node: String,
    /// vCPUs bound.
    pub cpus: u32,
    /// RAM bound, bytes.
    pub ram: u64,
    /// The workspace that fills it, once accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
}

/// One entry of an agreement's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgreementEvent {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What (`offer`, `accept`, `stage`, `start`, `missed-start`, `end`, …).
    pub action: String,
    /// Who (a DN, or `scheduler`).
    pub actor: String,
    /// Particulars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An agreement as the repository keeps it and the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Agreement {
    /// `ag-` and 16 hex digits.
    pub id: String,
    /// The owner's DN.
    pub owner: String,
    /// Where it is in its life.
    pub state: AgreementState,
    /// The description its workspaces are made from (JSON form).
    pub description: serde_json::Value,
    /// The existing workspace it was made for, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// One slot per workspace.
    pub slots: Vec<Slot>,
    /// When the workspaces start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// When their time is up.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// What they become then.
    pub at_end: AtEnd,
    /// Until when an offer may be accepted.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub offer_expires_at: Option<OffsetDateTime>,
    /// The agreement this offer renegotiates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// What happened to it, oldest first.
    pub history: Vec<AgreementEvent>,
    /// Bumped at every change (optimistic updates).
    pub version: i64,
}

impl Agreement {
    /// The RAM it holds on `node`.
    pub fn ram_on(&self, node: &str) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.node == node)
            .map(|s| s.ram)
            .sum()
    }

    /// Whether `[from, to)` overlaps its time.
    pub fn overlaps(&self, from: OffsetDateTime, to: OffsetDateTime) -> bool {
        self.start < to && from < self.end
    }

    /// Its workspaces' ids.
    pub fn workspaces(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().filter_map(|s| s.workspace.as_deref())
    }
}
