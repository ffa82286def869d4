//! The workspace lifecycle (ARCHITECTURE.md §4): the paper's four states plus
//! where the workspace lives, and the one table that says which action is legal.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Workspace state (paper §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// A cold image with no running processes.
    Shutdown,
    /// A hot image: memory state kept, not executing.
    Paused,
    /// Loaded and executing on a host.
    Running,
    /// Cannot be deployed because of an internal inconsistency.
    Corrupted,
}

impl State {
    /// All states, for tables and tests.
    pub const ALL: [State; 4] = [
        State::Shutdown,
        State::Paused,
        State::Running,
        State::Corrupted,
    ];

    /// The name used in every form.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Shutdown => "shutdown",
            State::Paused => "paused",
            State::Running => "running",
            State::Corrupted => "corrupted",
        }
    }

    /// Reads a state name.
    pub fn parse(s: &str) -> Option<Self> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a workspace is: checked in to the repository, or checked out (and
/// locked) on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// In the repository (checked in, unlocked).
    Repository,
    /// Staged on a host (checked out, locked).
    Host,
}

impl Placement {
    /// Both placements.
    pub const ALL: [Placement; 2] = [Placement::Repository, Placement::Host];

    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Repository => "repository",
            Placement::Host => "host",
        }
    }
}

/// Something a client or the system asks of a workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stage to a host and lock: legal when checked in and shutdown or paused.
    Deploy,
    /// Bring back to the repository and unlock: legal on a host when shutdown or paused.
    Undeploy,
    /// Boot (or restore): legal on a host when shutdown.
    Start,
    /// Shut down: legal on a host when running or paused.
    Stop,
    /// Freeze: legal on a host when running.
    Pause,
    /// Thaw: legal on a host when paused.
    Unpause,
    /// Save a hot image: legal on a host when paused; the state stays paused.
    Snapshot,
    /// Move to another host: legal on a host when running or paused.
    Migrate,
    /// Mark as broken, with a reason: legal from any state.
    Corrupt,
    /// Remove for good: legal from any state.
    Destroy,
}

impl Action {
    /// All actions, for tables and tests.
    pub const ALL: [Action; 10] = [
        Action::Deploy,
        Action::Undeploy,
        Action::Start,
        Action::Stop,
        Action::Pause,
        Action::Unpause,
        Action::Snapshot,
        Action::Migrate,
        Action::Corrupt,
        Action::Destroy,
    ];

    /// The verb as the CLI and API name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Undeploy => "undeploy",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Pause => "pause",
            Action::Unpause => "unpause",
            Action::Snapshot => "snapshot",
            Action::Migrate => "migrate",
            Action::Corrupt => "corrupt",
            Action::Destroy => "destroy",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a legal action leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The workspace ends up in this state and placement.
    To(State, Placement),
    /// The workspace is removed.
    Gone,
}

/// An action refused because of the state the workspace is in (HTTP 409).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a workspace that is {state} {where_}{hint}", where_ = where_(*.placement), hint = hint(*.action, *.state, *.placement))]
pub struct IllegalTransition {
    /// What was asked.
    pub action: Action,
    /// The state it is in.
    pub state: State,
    /// Where it is.
    pub placement: Placement,
}

fn where_(p: Placement) -> &'static str {
    match p {
        Placement::Repository => "in the repository",
        Placement::Host => "on a host",
    }
}

fn hint(action: Action, state: State, placement: Placement) -> &'static str {
    use Action::*;
    match (action, state, placement) {
        (_, State::Corrupted, _) => " (destroy it)",
        (
            Start | Stop | Pause | Unpause | Snapshot | Migrate | Undeploy,
            _,
            Placement::Repository,
        ) => " (deploy it first)",
        (Deploy, _, Placement::Host) => " (it is already deployed)",
        (Undeploy, State::Running, _) => " (stop or pause it first)",
        (Start, State::Running, _) | (Unpause, State::Running, _) => " (it is already running)",
        (Start, State::Paused, _) => " (unpause it)",
        (Snapshot, State::Running, _) => " (pause it first)",
        (Stop | Pause | Snapshot | Migrate, State::Shutdown, _) => " (start it first)",
        _ => "",
    }
}

/// The transition table: where `action` takes a workspace in `state` at
/// `placement`, or why it may not.
pub fn transition(
    state: State,
    placement: Placement,
    action: Action,
) -> Result<Outcome, IllegalTransition> {
    use Action::*;
    use Placement::{Host, Repository};
    use State::*;
    let to = match (action, state, placement) {
        (Destroy, _, _) => return Ok(Outcome::Gone),
        (Corrupt, _, p) => (Corrupted, p),
        (Deploy, Shutdown, Repository) => (Shutdown, Host),
        (Deploy, Paused, Repository) => (Paused, Host),
        (Undeploy, Shutdown, Host) => (Shutdown, Repository),
        (Undeploy, Paused, Host) => (Paused, Repository),
        (Start, Shutdown, Host) => (Running, Host),
        (Stop, Running | Paused, Host) => (Shutdown, Host),
        (Pause, Running, Host) => (Paused, Host),
        (Unpause, Paused, Host) => (Running, Host),
        (Snapshot, Paused, Host) => (Paused, Host),
        (Migrate, s @ (Running | Paused), Host) => (s, Host),
        _ => {
            return Err(IllegalTransition {
                action,
                state,
                placement,
            })
        }
    };
    Ok(Outcome::To(to.0, to.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Placement::{Host, Repository as Repo};
    use State::*;

    /// One row of the expected table: action, from, and where it leads (`None`: refused).
    type Row = (Action, State, Placement, Option<(State, Placement)>);

    /// The whole table, written out: every (action, state, placement) and its
    /// expected outcome; `None` means refused.
    #[test]
    fn transition_table() {
        let expected: &[Row] = &[
            (Deploy, Shutdown, Repo, Some((Shutdown, Host))),
            (Deploy, Paused, Repo, Some((Paused, Host))),
            (Deploy, Running, Repo, None),
            (Deploy, Corrupted, Repo, None),
            (Deploy, Shutdown, Host, None),
            (Deploy, Paused, Host, None),
            (Deploy, Running, Host, None),
            (Deploy, Corrupted, Host, None),
            (Undeploy, Shutdown, Host, Some((Shutdown, Repo))),
            (Undeploy, Paused, Host, Some((Paused, Repo))),
            (Undeploy, Running, Host, None),
            (Undeploy, Corrupted, Host, None),
            (Undeploy, Shutdown, Repo, None),
            (Undeploy, Paused, Repo, None),
            (Undeploy, Running, Repo, None),
            (Undeploy, Corrupted, Repo, None),
            (Start, Shutdown, Host, Some((Running, Host))),
            (Start, Paused, Host, None),
            (Start, Running, Host, None),
            (Start, Corrupted, Host, None),
            (Start, Shutdown, Repo, None),
            (Start, Paused, Repo, None),
            (Start, Running, Repo, None),
            (Start, Corrupted, Repo, None),
            (Stop, Running, Host, Some((Shutdown, Host))),
            (Stop, Paused, Host, Some((Shutdown, Host))),
            (Stop, Shutdown, Host, None),
            (Stop, Corrupted, Host, None),
            (Stop, Shutdown, Repo, None),
            (Stop, Paused, Repo, None),
            (Stop, Running, Repo, None),
            (Stop, Corrupted, Repo, None),
            (Pause, Running, Host, Some((Paused, Host))),
            (Pause, Shutdown, Host, None),
            (Pause, Paused, Host, None),
            (Pause, Corrupted, Host, None),
            (Pause, Shutdown, Repo, None),
            (Pause, Paused, Repo, None),
            (Pause, Running, Repo, None),
            (Pause, Corrupted, Repo, None),
            (Unpause, Paused, Host, Some((Running, Host))),
            (Unpause, Shutdown, Host, None),
            (Unpause, Running, Host, None),
            (Unpause, Corrupted, Host, None),
            (Unpause, Shutdown, Repo, None),
            (Unpause, Paused, Repo, None),
            (Unpause, Running, Repo, None),
            (Unpause, Corrupted, Repo, None),
            (Snapshot, Paused, Host, Some((Paused, Host))),
            (Snapshot, Shutdown, Host, None),
            (Snapshot, Running, Host, None),
            (Snapshot, Corrupted, Host, None),
            (Snapshot, Shutdown, Repo, None),
            (Snapshot, Paused, Repo, None),
            (Snapshot, Running, Repo, None),
            (Snapshot, Corrupted, Repo, None),
            (Migrate, Running, Host, Some((Running, Host))),
            (Migrate, Paused, Host, Some((Paused, Host))),
            (Migrate, Shutdown, Host, None),
            (Migrate, Corrupted, Host, None),
            (Migrate, Shutdown, Repo, None),
            (Migrate, Paused, Repo, None),
            (Migrate, Running, Repo, None),
            (Migrate, Corrupted, Repo, None),
        ];
        // Every non-universal combination is listed exactly once.
        let universal = [Corrupt, Destroy];
        let combos =
            (Action::ALL.len() - universal.len()) * State::ALL.len() * Placement::ALL.len();
        assert_eq!(expected.len(), combos);
        for &(action, state, placement, want) in expected {
            let got = transition(state, placement, action);
            match want {
                Some((s, p)) => assert_eq!(
                    got,
                    Ok(Outcome::To(s, p)),
                    "{action} from {state}/{placement:?}"
                ),
                None => {
                    let err = got.expect_err(&format!(
                        "{action} from {state}/{placement:?} must be refused"
                    ));
                    assert_eq!(
                        (err.action, err.state, err.placement),
                        (action, state, placement)
                    );
                    assert!(
                        err.to_string().contains(state.as_str()),
                        "message names the state: {err}"
                    );
                }
            }
        }
        for state in State::ALL {
            for placement in Placement::ALL {
                assert_eq!(transition(state, placement, Destroy), Ok(Outcome::Gone));
                assert_eq!(
                    transition(state, placement, Corrupt),
                    Ok(Outcome::To(Corrupted, placement))
                );
            }
        }
    }

    #[test]
    fn refusals_explain_what_to_do() {
        let err = transition(Shutdown, Repo, Start).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start a workspace that is shutdown in the repository (deploy it first)"
        );
        let err = transition(Running, Host, Undeploy).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot undeploy a workspace that is running on a host (stop or pause it first)"
        );
    }
}

/// The lifecycle verbs that take a deployed workspace from one state to
/// another on its node (the paper's start, pause, shutdown and their
/// inverses), each one lifecycle action. Each is a route of its own
/// (`POST /v1/workspaces/{id}/VERB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Boots it (or restores its saved memory).
    Start,
    /// Shuts it down.
    Stop,
    /// Pauses it in memory.
    Pause,
    /// Resumes it.
    Unpause,
    /// Checks its disk (and memory, when paused) back into the repository.
    Undeploy,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 5] = [
        Verb::Start,
        Verb::Stop,
        Verb::Pause,
        Verb::Unpause,
        Verb::Undeploy,
    ];

    /// The verb's name in paths and messages.
    pub fn as_str(self) -> &'static str {
        self.action().as_str()
    }

    /// The lifecycle action it records.
    pub fn action(self) -> Action {
        match self {
            Verb::Start => Action::Start,
            Verb::Stop => Action::Stop,
            Verb::Pause => Action::Pause,
            Verb::Unpause => Action::Unpause,
            Verb::Undeploy => Action::Undeploy,
        }
    }
}
