//! The case lifecycle: states, transitions, who may take them, and the event
//! each writes to the case log.
//!
//! ```text
//! open ──approve──▶ approved ──(staged + verified)──▶ exported ──confirm──▶ received ──close──▶ closed
//!   │                  │                                 │
//!   └──reject──▶ rejected  └──(mismatch)──▶ blocked        └──(ttl passes)──▶ expired
//! ```
//!
//! `blocked` (a file did not match the catalog when staged) can be approved
//! again (after the GDB was repaired) or rejected. `close --force --reason`
//! closes a case from any non-terminal state. A self-service request can be
//! cancelled by its requester until it is exported (from `open`, `approved`
//! or `blocked`): `cancelled`, terminal.

use crate::audit::EventKind;
use crate::domain::directory::SelfService;
use crate::domain::verify::{CaseFile, Report};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseState {
    Open,
    Approved,
    Blocked,
    Exported,
    Received,
    Closed,
    Rejected,
    Expired,
    /// A self-service request its requester withdrew before it was exported.
    Cancelled,
}

impl CaseState {
    pub const ALL: [CaseState; 9] = [
        CaseState::Open,
        CaseState::Approved,
        CaseState::Blocked,
        CaseState::Exported,
        CaseState::Received,
        CaseState::Closed,
        CaseState::Rejected,
        CaseState::Expired,
        CaseState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Open => "open",
            CaseState::Approved => "approved",
            CaseState::Blocked => "blocked",
            CaseState::Exported => "exported",
            CaseState::Received => "received",
            CaseState::Closed => "closed",
            CaseState::Rejected => "rejected",
            CaseState::Expired => "expired",
            CaseState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<CaseState> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The states whose case directory is in the mount.
    pub const VISIBLE: [CaseState; 2] = [CaseState::Exported, CaseState::Received];

    /// The states no transition leaves; their logs are sealed.
    pub const TERMINAL: [CaseState; 4] = [CaseState::Closed, CaseState::Rejected, CaseState::Expired, CaseState::Cancelled];

    /// No transition leaves a terminal state; its log is sealed.
    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Whether the case's directory is in the mount.
    pub fn is_visible(self) -> bool {
        Self::VISIBLE.contains(&self)
    }
}

impl fmt::Display for CaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new case as `case open` or `request open` registers it.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub case_ref: String,
    pub requester: String,
    pub department: Option<String>,
    pub submitter: Option<String>,
    pub report: Report,
    pub files: Vec<CaseFile>,
    /// The uid that registered the case (staff, or the requester's account).
    pub opened_uid: u32,
    /// For a self-service request: the department's policy when it was made.
    pub self_service: Option<SelfService>,
}

/// A case as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub case_ref: String,
    pub state: CaseState,
    pub requester: String,
    pub department: Option<String>,
    pub submitter: Option<String>,
    pub verified: bool,
    pub report: Report,
    pub created_at: String,
    /// Unix seconds when the case entered its current state.
    pub state_since: i64,
    pub event_count: u64,
    pub head_hash: String,
    /// The uid that registered the case (`None` only if the register lost it).
    #[serde(default)]
    pub opened_uid: Option<u32>,
    /// For a self-service request, the department's policy when it was made
    /// (`review` or `auto`); `None` for a case staff registered.
    #[serde(default)]
    pub self_service: Option<SelfService>,
    /// The host that serves the case (stages it and shows it in its mount),
    /// from its approval on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl CaseRecord {
    /// The facts the state machine decides on.
    pub fn facts(&self) -> CaseFacts<'_> {
        CaseFacts {
            state: self.state,
            verified: self.verified,
            department: self.department.as_deref(),
            requester: &self.requester,
            self_service: self.self_service.is_some(),
        }
    }
}

/// Who is asking, as decided from the caller's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Root or a member of `staff_group`.
    Staff,
    /// A department's transfer account.
    Transfer { department: String },
    /// A directory user, by the unix account they log in with (self-service).
    Requester { user: String, department: String },
    /// workcopy itself (expiry, recovery, self-service `auto` approval).
    System,
    /// Anyone else.
    Nobody,
}

/// An action on an existing case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Approve,
    /// Staging finished and every file matched.
    Export,
    /// Staging found a mismatch or could not read a file.
    Block,
    Reject,
    Confirm,
    Close,
    ForceClose,
    Expire,
    /// A requester withdraws their own self-service request.
    Cancel,
}

impl Action {
    /// The event written to the case log when the action is taken.
    pub fn event(self) -> EventKind {
        match self {
            Action::Approve => EventKind::Approved,
            Action::Export => EventKind::Exported,
            Action::Block => EventKind::Blocked,
            Action::Reject => EventKind::Rejected,
            Action::Confirm => EventKind::Received,
            Action::Close | Action::ForceClose => EventKind::Closed,
            Action::Expire => EventKind::Expired,
            Action::Cancel => EventKind::Cancelled,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Export => "export",
            Action::Block => "block",
            Action::Reject => "reject",
            Action::Confirm => "confirm receipt of",
            Action::Close => "close",
            Action::ForceClose => "force-close",
            Action::Expire => "expire",
            Action::Cancel => "cancel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("permission denied: only staff may {0} a case")]
    NotStaff(&'static str),
    #[error("permission denied: only staff or the case's own department may {0} it")]
    NotOwner(&'static str),
    #[error("permission denied: only its requester may {0} a self-service request (staff reject or close cases)")]
    NotRequester(&'static str),
    #[error("case is {state}; cannot {verb} it{hint}")]
    WrongState {
        state: CaseState,
        verb: &'static str,
        hint: &'static str,
    },
    #[error("case failed verification and can never be approved; reject it and register a corrected request")]
    NotVerified,
}

/// The facts about a case the rules need.
#[derive(Debug, Clone, Copy)]
pub struct CaseFacts<'a> {
    pub state: CaseState,
    pub verified: bool,
    pub department: Option<&'a str>,
    /// The requesting directory user.
    pub requester: &'a str,
    /// Whether the case is a self-service request.
    pub self_service: bool,
}

/// Decides whether `role` may take `action` on a case, and the state it leads to.
pub fn transition(role: &Role, action: Action, case: CaseFacts<'_>) -> Result<CaseState, TransitionError> {
    use CaseState as S;
    let verb = action.verb();
    match (action, role) {
        (Action::Confirm, Role::Staff) => {}
        (Action::Confirm, Role::Transfer { department }) if Some(department.as_str()) == case.department => {}
        (Action::Confirm, _) => return Err(TransitionError::NotOwner(verb)),
        (Action::Cancel, Role::Requester { user, .. }) if case.self_service && user == case.requester => {}
        (Action::Cancel, _) => return Err(TransitionError::NotRequester(verb)),
        // A department's `self_service = "auto"`: workcopy approves a verified request itself.
        (Action::Export | Action::Block | Action::Expire | Action::Approve, Role::System) => {}
        (Action::Export | Action::Block | Action::Expire, _) => return Err(TransitionError::NotStaff(verb)),
        (_, Role::Staff) => {}
        (_, _) => return Err(TransitionError::NotStaff(verb)),
    }
    let wrong = |hint: &'static str| TransitionError::WrongState {
        state: case.state,
        verb,
        hint,
    };
    match (action, case.state) {
        (Action::Approve, S::Open | S::Blocked) if !case.verified => Err(TransitionError::NotVerified),
        (Action::Approve, S::Open | S::Blocked) => Ok(S::Approved),
        (Action::Approve, _) => Err(wrong("")),
        (Action::Export, S::Approved) => Ok(S::Exported),
        (Action::Block, S::Approved) => Ok(S::Blocked),
        (Action::Export | Action::Block, _) => Err(wrong("")),
        (Action::Reject, S::Open | S::Blocked) => Ok(S::Rejected),
        (Action::Reject, S::Approved | S::Exported | S::Received) => {
            Err(wrong(" (use `case close --force --reason` to withdraw an approved case)"))
        }
        (Action::Reject, _) => Err(wrong("")),
        (Action::Confirm, S::Exported) => Ok(S::Received),
        (Action::Confirm, _) => Err(wrong("")),
        (Action::Close, S::Received) => Ok(S::Closed),
        (Action::Close, s) if !s.is_terminal() => Err(wrong(" before receipt is confirmed (use --force --reason)")),
        (Action::Close, _) => Err(wrong("")),
        (Action::ForceClose, s) if !s.is_terminal() => Ok(S::Closed),
        (Action::ForceClose, _) => Err(wrong("")),
        (Action::Expire, S::Exported) => Ok(S::Expired),
        (Action::Expire, _) => Err(wrong("")),
        (Action::Cancel, S::Open | S::Approved | S::Blocked) => Ok(S::Cancelled),
        (Action::Cancel, S::Exported | S::Received) => Err(wrong(
            " (it is in the mount already; the department's transfer job pulls it, and workcopy staff can close it)",
        )),
        (Action::Cancel, _) => Err(wrong("")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CaseState as S;

    fn facts(state: CaseState) -> CaseFacts<'static> {
        CaseFacts {
            state,
            verified: true,
            department: Some("RH-KGA"),
            requester: "alice@regionh.dk",
            self_service: false,
        }
    }

    /// A self-service request of alice's.
    fn request(state: CaseState) -> CaseFacts<'static> {
        CaseFacts {
            self_service: true,
            ..facts(state)
        }
    }

    fn alice() -> Role {
        Role::Requester {
            user: "alice@regionh.dk".into(),
            department: "RH-KGA".into(),
        }
    }

    fn staff(action: Action, state: CaseState) -> Result<CaseState, TransitionError> {
        transition(&Role::Staff, action, facts(state))
    }

    #[test]
    fn the_happy_path() {
        assert_eq!(staff(Action::Approve, S::Open), Ok(S::Approved));
        assert_eq!(transition(&Role::System, Action::Export, facts(S::Approved)), Ok(S::Exported));
        let owner = Role::Transfer {
            department: "RH-KGA".into(),
        };
        assert_eq!(transition(&owner, Action::Confirm, facts(S::Exported)), Ok(S::Received));
        assert_eq!(staff(Action::Close, S::Received), Ok(S::Closed));
    }

    #[test]
    fn every_transition_table() {
        // (action, from, to) for staff or system; every other pair is refused.
        let allowed: &[(Action, S, S)] = &[
            (Action::Approve, S::Open, S::Approved),
            (Action::Approve, S::Blocked, S::Approved),
            (Action::Export, S::Approved, S::Exported),
            (Action::Block, S::Approved, S::Blocked),
            (Action::Reject, S::Open, S::Rejected),
            (Action::Reject, S::Blocked, S::Rejected),
            (Action::Confirm, S::Exported, S::Received),
            (Action::Close, S::Received, S::Closed),
            (Action::ForceClose, S::Open, S::Closed),
            (Action::ForceClose, S::Approved, S::Closed),
            (Action::ForceClose, S::Blocked, S::Closed),
            (Action::ForceClose, S::Exported, S::Closed),
            (Action::ForceClose, S::Received, S::Closed),
            (Action::Expire, S::Exported, S::Expired),
            (Action::Cancel, S::Open, S::Cancelled),
            (Action::Cancel, S::Approved, S::Cancelled),
            (Action::Cancel, S::Blocked, S::Cancelled),
        ];
        let actions = [
            Action::Approve,
            Action::Export,
            Action::Block,
            Action::Reject,
            Action::Confirm,
            Action::Close,
            Action::ForceClose,
            Action::Expire,
            Action::Cancel,
        ];
        for a in actions {
            let role = match a {
                Action::Export | Action::Block | Action::Expire => Role::System,
                Action::Cancel => alice(),
                _ => Role::Staff,
            };
            for s in S::ALL {
                let got = transition(&role, a, request(s)).ok();
                let want = allowed.iter().find(|(x, from, _)| *x == a && *from == s).map(|t| t.2);
                assert_eq!(got, want, "{a:?} from {s}");
            }
        }
    }

    #[test]
    fn terminal_states_are_final() {
        for s in [S::Closed, S::Rejected, S::Expired, S::Cancelled] {
            assert!(s.is_terminal());
            for a in [Action::Approve, Action::Reject, Action::Confirm, Action::Close, Action::ForceClose] {
                assert!(staff(a, s).is_err());
            }
            assert!(transition(&alice(), Action::Cancel, request(s)).is_err());
        }
        assert_eq!(CaseState::TERMINAL.len(), 4);
        assert!(!S::Cancelled.is_visible());
    }

    #[test]
    fn only_its_requester_cancels_a_self_service_request_until_it_is_exported() {
        assert_eq!(transition(&alice(), Action::Cancel, request(S::Open)), Ok(S::Cancelled));
        assert_eq!(transition(&alice(), Action::Cancel, request(S::Blocked)), Ok(S::Cancelled));
        // Another requester (of the same department), staff, the department, workcopy: refused.
        let bob = Role::Requester {
            user: "bob@regionh.dk".into(),
            department: "RH-KGA".into(),
        };
        let owner = Role::Transfer {
            department: "RH-KGA".into(),
        };
        for role in [bob, Role::Staff, owner, Role::System, Role::Nobody] {
            assert!(matches!(
                transition(&role, Action::Cancel, request(S::Open)),
                Err(TransitionError::NotRequester(_))
            ));
        }
        // A case staff registered for alice is not hers to cancel.
        assert!(matches!(
            transition(&alice(), Action::Cancel, facts(S::Open)),
            Err(TransitionError::NotRequester(_))
        ));
        // In the mount already: says what happens instead.
        match transition(&alice(), Action::Cancel, request(S::Exported)) {
            Err(e @ TransitionError::WrongState { .. }) => assert!(e.to_string().contains("close"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_requester_may_take_no_other_action() {
        for a in [
            Action::Approve,
            Action::Reject,
            Action::Close,
            Action::ForceClose,
            Action::Export,
            Action::Block,
            Action::Expire,
        ] {
            for s in S::ALL {
                assert!(
                    matches!(transition(&alice(), a, request(s)), Err(TransitionError::NotStaff(_))),
                    "{a:?} from {s}"
                );
            }
        }
        for s in S::ALL {
            assert!(matches!(
                transition(&alice(), Action::Confirm, request(s)),
                Err(TransitionError::NotOwner(_))
            ));
        }
    }

    #[test]
    fn workcopy_approves_for_the_auto_policy_as_staff_would() {
        assert_eq!(transition(&Role::System, Action::Approve, request(S::Open)), Ok(S::Approved));
        let unverified = CaseFacts {
            verified: false,
            ..request(S::Open)
        };
        assert_eq!(
            transition(&Role::System, Action::Approve, unverified),
            Err(TransitionError::NotVerified)
        );
        for a in [Action::Reject, Action::Close, Action::ForceClose, Action::Confirm] {
            assert!(transition(&Role::System, a, request(S::Open)).is_err(), "{a:?}");
        }
    }

    #[test]
    fn unverified_case_can_never_be_approved() {
        let f = CaseFacts {
            verified: false,
            ..facts(S::Open)
        };
        assert_eq!(transition(&Role::Staff, Action::Approve, f), Err(TransitionError::NotVerified));
    }

    #[test]
    fn who_may_do_what() {
        let owner = Role::Transfer {
            department: "RH-KGA".into(),
        };
        let other = Role::Transfer {
            department: "AUH-KGA".into(),
        };
        for a in [Action::Approve, Action::Reject, Action::Close, Action::ForceClose] {
            assert!(matches!(transition(&owner, a, facts(S::Open)), Err(TransitionError::NotStaff(_))));
            assert!(matches!(
                transition(&Role::Nobody, a, facts(S::Open)),
                Err(TransitionError::NotStaff(_))
            ));
        }
        assert!(matches!(
            transition(&other, Action::Confirm, facts(S::Exported)),
            Err(TransitionError::NotOwner(_))
        ));
        assert!(matches!(
            transition(&Role::Nobody, Action::Confirm, facts(S::Exported)),
            Err(TransitionError::NotOwner(_))
        ));
        assert_eq!(transition(&Role::Staff, Action::Confirm, facts(S::Exported)), Ok(S::Received));
        for a in [Action::Export, Action::Block, Action::Expire] {
            assert!(transition(&Role::Staff, a, facts(S::Approved)).is_err());
        }
        // An owner cannot confirm a case whose department is unknown.
        let f = CaseFacts {
            department: None,
            ..facts(S::Exported)
        };
        assert!(transition(&owner, Action::Confirm, f).is_err());
    }

    #[test]
    fn states_round_trip() {
        for s in S::ALL {
            assert_eq!(CaseState::parse(s.as_str()), Some(s));
        }
        assert_eq!(CaseState::parse("nope"), None);
    }
}
