//! The boot decision table of DESIGN §4, as a pure function.

use crate::model::node::{Node, NodeState, Workflow};

/// `offline.default_action`: what unknown and discovered nodes get while
/// the controller is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineDefault {
    /// Boot the local disk.
    Local,
    /// Boot the discovery image.
    Discovery,
    /// Serve the script this MAC got last time, where that is safe.
    LastKnown,
}

/// Whether the data behind a decision may be trusted as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// Controller reachable, or no controller (standalone: the local store
    /// takes its place).
    Online,
    /// Controller unreachable: act only on what cannot do harm from stale data.
    Offline,
}

/// What a boot script makes the node do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the node's workflow (installs an OS: destructive).
    Install,
    /// Boot the local disk.
    Local,
    /// Boot the discovery image.
    Discovery,
    /// Print why and stop: a retired node never boots.
    Retired,
    /// Serve the script this MAC got last time (offline only).
    LastKnown,
}

impl Action {
    /// The name the status line and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Local => "local",
            Action::Discovery => "discovery",
            Action::Retired => "retired",
            Action::LastKnown => "last_known",
        }
    }

    /// Does running this action wipe or rewrite a disk?
    pub fn is_destructive(self) -> bool {
        matches!(self, Action::Install)
    }
}

/// Extra text printed before a local boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Banner {
    /// No banner.
    None,
    /// An install is due but cannot run from cached data.
    Hold,
    /// An install was started and has not reported back.
    InstallInProgress,
    /// The last install reported failure.
    InstallFailed,
    /// Reprovision requested but no workflow is assigned.
    NoWorkflow,
    /// An install was held back: the node has an open conflict (DESIGN §8).
    Conflict,
    /// An offline install was not started: a file it needs is not in the
    /// content cache (DESIGN §12).
    NotCached,
}

impl Banner {
    /// The banner's name in the status line; None for no banner.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Banner::None => None,
            Banner::Hold => Some("hold"),
            Banner::InstallInProgress => Some("installing"),
            Banner::InstallFailed => Some("install_failed"),
            Banner::NoWorkflow => Some("no_workflow"),
            Banner::Conflict => Some("conflict"),
            Banner::NotCached => Some("not_cached"),
        }
    }
}

/// The outcome of the decision table for one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the node does.
    pub action: Action,
    /// What is printed before a local boot.
    pub banner: Banner,
    /// The workflow an `Install` runs.
    pub workflow: Option<Workflow>,
    /// The open conflict an install was held back for.
    pub conflict: Option<u64>,
    /// The file an offline install was held back for (not cached).
    pub missing_file: Option<String>,
}

impl Decision {
    fn plain(action: Action) -> Decision {
        Decision {
            action,
            banner: Banner::None,
            workflow: None,
            conflict: None,
            missing_file: None,
        }
    }

    fn local(banner: Banner) -> Decision {
        Decision {
            action: Action::Local,
            banner,
            workflow: None,
            conflict: None,
            missing_file: None,
        }
    }

    fn install(workflow: &Workflow) -> Decision {
        Decision {
            action: Action::Install,
            banner: Banner::None,
            workflow: Some(workflow.clone()),
            conflict: None,
            missing_file: None,
        }
    }

    /// DESIGN §8: while a node has an open conflict, nothing destructive —
    /// an install (from either side's record) becomes a local boot with
    /// the CONFLICT banner naming the conflict. `destructive_replay`: the
    /// decision replays a last-known script that would install.
    /// DESIGN §12 offline rule: an install that needs `file`, which is
    /// not cached, is not started (it could not finish): local boot with
    /// the banner naming the file.
    pub fn held_for_missing_file(self, file: &str, destructive_replay: bool) -> Decision {
        let destructive = self.action == Action::Install
            || (self.action == Action::LastKnown && destructive_replay);
        if !destructive {
            return self;
        }
        Decision {
            missing_file: Some(file.to_string()),
            ..Decision::local(Banner::NotCached)
        }
    }

    /// An install (or a destructive replay) held back for an open conflict:
    /// the node gets its disk and the CONFLICT banner instead.
    pub fn held_for_conflict(self, conflict: u64, destructive_replay: bool) -> Decision {
        let destructive = self.action == Action::Install
            || (self.action == Action::LastKnown && destructive_replay);
        if !destructive {
            return self;
        }
        Decision {
            conflict: Some(conflict),
            ..Decision::local(Banner::Conflict)
        }
    }
}

/// Inputs that are not the node itself.
#[derive(Debug, Clone, Copy)]
pub struct DecisionContext {
    /// Is the controller reachable?
    pub connectivity: Connectivity,
    /// What unknown and discovered nodes get while it is not.
    pub offline_default: OfflineDefault,
    /// A last-served script exists and may be replayed (it is not destructive,
    /// or its workflow is `offline_safe`).
    pub last_known_replayable: bool,
}

/// Decides what a node should boot. `node` is `None` for a MAC never seen
/// (the caller registers it first when online); `workflow` is the node's
/// assigned workflow if it exists.
pub fn decide(node: Option<&Node>, workflow: Option<&Workflow>, ctx: DecisionContext) -> Decision {
    let online = ctx.connectivity == Connectivity::Online;
    let Some(node) = node else {
        return if online {
            Decision::plain(Action::Discovery)
        } else {
            offline_default(ctx)
        };
    };
    match node.state {
        NodeState::Discovered if online => Decision::plain(Action::Discovery),
        NodeState::Discovered => offline_default(ctx),
        NodeState::Pending => match workflow {
            Some(wf) if online || wf.offline_safe => Decision::install(wf),
            Some(_) => Decision::local(Banner::Hold),
            None if online => Decision::plain(Action::Discovery),
            None => Decision::local(Banner::None),
        },
        NodeState::Installing => Decision::local(Banner::InstallInProgress),
        NodeState::InstallFailed => Decision::local(Banner::InstallFailed),
        NodeState::Installed
        | NodeState::Active
        | NodeState::Migrating
        | NodeState::ServingSource
        | NodeState::CloningTarget
        | NodeState::Deprovisioning => Decision::local(Banner::None),
        // Reinstalling from stale data could wipe a server the controller
        // has since put back in service, so offline it is always local.
        NodeState::Reprovision if !online => Decision::local(Banner::None),
        NodeState::Reprovision => match workflow {
            Some(wf) => Decision::install(wf),
            None => Decision::local(Banner::NoWorkflow),
        },
        NodeState::Retired => Decision::plain(Action::Retired),
    }
}

fn offline_default(ctx: DecisionContext) -> Decision {
    match ctx.offline_default {
        OfflineDefault::Local => Decision::local(Banner::None),
        OfflineDefault::Discovery => Decision::plain(Action::Discovery),
        OfflineDefault::LastKnown if ctx.last_known_replayable => {
            Decision::plain(Action::LastKnown)
        }
        OfflineDefault::LastKnown => Decision::local(Banner::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::node::BootMethod;
    use time::OffsetDateTime;

    fn node(state: NodeState) -> Node {
        Node::new_local(
            "52:54:00:00:00:01".parse().unwrap(),
            state,
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    fn workflow(offline_safe: bool) -> Workflow {
        Workflow {
            id: "wf".into(),
            name: "wf".into(),
            method: BootMethod::Kernel,
            kernel: "k".into(),
            initrd: vec![],
            cmdline: String::new(),
            url: None,
            offline_safe,
        }
    }

    fn ctx(connectivity: Connectivity, offline_default: OfflineDefault) -> DecisionContext {
        DecisionContext {
            connectivity,
            offline_default,
            last_known_replayable: true,
        }
    }

    const ON: Connectivity = Connectivity::Online;
    const OFF: Connectivity = Connectivity::Offline;

    fn action(
        state: Option<NodeState>,
        wf: Option<&Workflow>,
        c: DecisionContext,
    ) -> (Action, Banner) {
        let n = state.map(node);
        let d = decide(n.as_ref(), wf, c);
        (d.action, d.banner)
    }

    #[test]
    fn online_column() {
        let c = ctx(ON, OfflineDefault::Local);
        let wf = workflow(false);
        assert_eq!(action(None, None, c).0, Action::Discovery);
        assert_eq!(
            action(Some(NodeState::Discovered), None, c).0,
            Action::Discovery
        );
        assert_eq!(
            action(Some(NodeState::Pending), Some(&wf), c).0,
            Action::Install
        );
        assert_eq!(
            action(Some(NodeState::Pending), None, c).0,
            Action::Discovery
        );
        assert_eq!(
            action(Some(NodeState::Installing), None, c),
            (Action::Local, Banner::InstallInProgress)
        );
        assert_eq!(
            action(Some(NodeState::InstallFailed), None, c),
            (Action::Local, Banner::InstallFailed)
        );
        for s in [
            NodeState::Installed,
            NodeState::Active,
            NodeState::Migrating,
            NodeState::ServingSource,
            NodeState::CloningTarget,
            NodeState::Deprovisioning,
        ] {
            assert_eq!(
                action(Some(s), Some(&wf), c),
                (Action::Local, Banner::None),
                "{s}"
            );
        }
        assert_eq!(
            action(Some(NodeState::Reprovision), Some(&wf), c).0,
            Action::Install
        );
        assert_eq!(
            action(Some(NodeState::Reprovision), None, c),
            (Action::Local, Banner::NoWorkflow)
        );
        assert_eq!(action(Some(NodeState::Retired), None, c).0, Action::Retired);
    }

    #[test]
    fn offline_column_is_never_destructive_from_stale_state() {
        let c = ctx(OFF, OfflineDefault::Local);
        let unsafe_wf = workflow(false);
        let safe_wf = workflow(true);
        assert_eq!(action(None, None, c).0, Action::Local);
        assert_eq!(
            action(Some(NodeState::Discovered), None, c).0,
            Action::Local
        );
        assert_eq!(
            action(Some(NodeState::Pending), Some(&unsafe_wf), c),
            (Action::Local, Banner::Hold)
        );
        assert_eq!(
            action(Some(NodeState::Pending), Some(&safe_wf), c).0,
            Action::Install
        );
        assert_eq!(
            action(Some(NodeState::Pending), None, c),
            (Action::Local, Banner::None)
        );
        assert_eq!(
            action(Some(NodeState::Reprovision), Some(&safe_wf), c).0,
            Action::Local
        );
        assert_eq!(action(Some(NodeState::Retired), None, c).0, Action::Retired);
        assert_eq!(
            action(Some(NodeState::Installing), None, c),
            (Action::Local, Banner::InstallInProgress)
        );
    }

    #[test]
    fn offline_default_action_applies_to_unknown_and_discovered() {
        for (default, expected) in [
            (OfflineDefault::Local, Action::Local),
            (OfflineDefault::Discovery, Action::Discovery),
            (OfflineDefault::LastKnown, Action::LastKnown),
        ] {
            let c = ctx(OFF, default);
            assert_eq!(action(None, None, c).0, expected);
            assert_eq!(action(Some(NodeState::Discovered), None, c).0, expected);
        }
        let mut c = ctx(OFF, OfflineDefault::LastKnown);
        c.last_known_replayable = false;
        assert_eq!(action(None, None, c).0, Action::Local);
    }

    #[test]
    fn only_install_is_destructive() {
        assert!(Action::Install.is_destructive());
        for a in [
            Action::Local,
            Action::Discovery,
            Action::Retired,
            Action::LastKnown,
        ] {
            assert!(!a.is_destructive());
        }
    }
}
