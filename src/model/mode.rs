//! The agent's mode: whose word about a node counts right now.

use time::OffsetDateTime;

/// Standalone (no controller configured: the local store is the truth),
/// online (the controller is reachable) or offline (it is not, since
/// `since`). One place decides it: the controller port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No controller is configured: the local store is the truth.
    Standalone,
    /// The controller is reachable.
    Online,
    /// The controller is configured and has been unreachable since `since`.
    Offline {
        /// When the agent last found it unreachable after being online.
        since: OffsetDateTime,
    },
}

impl Mode {
    /// The mode's name in the status line and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Online => "online",
            Mode::Offline { .. } => "offline",
        }
    }

    /// The controller is configured and unreachable.
    pub fn is_offline(self) -> bool {
        matches!(self, Mode::Offline { .. })
    }

    /// A controller is configured (online or offline).
    pub fn has_controller(self) -> bool {
        !matches!(self, Mode::Standalone)
    }
}
