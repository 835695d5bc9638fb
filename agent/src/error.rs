//! The agent's error at the library boundary: why [`crate::run_agent`] gave up, worded for
//! the operator who has to act on it.

use infermine_protocol::{CloseCode, PROTOCOL_VERSION};

use crate::config::ConfigError;

/// Why the agent stopped for good. Connection trouble is never here: the agent reconnects.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "the coordinator refused the miner token ({reason}): mint a new one on the portal or \
         with `infermine-server miner-token --wallet ADDRESS --name RIG` and pass it with \
         --token-file or --token"
    )]
    Unauthorized { reason: String },
    #[error(
        "the coordinator does not speak protocol version {PROTOCOL_VERSION} of this agent \
         ({reason}): install the infermine-agent release the coordinator supports"
    )]
    IncompatibleProtocol { reason: String },
    #[error(
        "the coordinator suspended this miner ({reason}): the portal shows the review case \
         and how to appeal"
    )]
    Suspended { reason: String },
    #[error("could not start the slot workers: {0}")]
    Start(#[source] std::io::Error),
    /// A model's files do not match the registry (or its manifest is unavailable).
    #[error("{0}")]
    Integrity(#[from] crate::models::IntegrityError),
}

impl AgentError {
    /// The refusal a fatal close code stands for; `None` for codes worth reconnecting after.
    pub(crate) fn from_close(code: CloseCode, reason: &str) -> Option<Self> {
        let reason = if reason.trim().is_empty() {
            "no reason given".to_owned()
        } else {
            reason.trim().to_owned()
        };
        match code {
            CloseCode::Unauthorized => Some(Self::Unauthorized { reason }),
            CloseCode::IncompatibleProtocol => Some(Self::IncompatibleProtocol { reason }),
            CloseCode::Suspended => Some(Self::Suspended { reason }),
            _ => None,
        }
    }

    /// The process exit status `infermine-agent` ends with: 1 for configuration and start-up
    /// errors, 2 when the token is refused, 3 for a protocol mismatch, 4 when suspended.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Start(_) | Self::Integrity(_) => 1,
            Self::Unauthorized { .. } => 2,
            Self::IncompatibleProtocol { .. } => 3,
            Self::Suspended { .. } => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fatal_close_codes_become_errors() {
        for code in [4001, 4002, 4003, 4004, 4005, 4006, 1001, 1002, 1008, 1009] {
            let close = CloseCode::from_code(code).expect("known code");
            assert_eq!(
                AgentError::from_close(close, "").is_some(),
                close.is_fatal(),
                "{close:?}"
            );
        }
        let refused = AgentError::from_close(CloseCode::Unauthorized, " token revoked ");
        let refused = refused.expect("fatal");
        assert_eq!(refused.exit_code(), 2);
        assert!(refused.to_string().contains("(token revoked)"));
        assert!(refused.to_string().contains("--token"));
    }
}
