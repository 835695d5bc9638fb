//! WebSocket close codes the coordinator uses to end an agent session, and what they mean to
//! the agent (reconnect or give up).

/// Why the coordinator closed an agent's socket. Sent as the close frame's code, with a
/// human-readable reason beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// The server is shutting down or draining; reconnect later (standard 1001).
    GoingAway,
    /// A frame was not valid JSON or not a known message (standard 1002).
    ProtocolError,
    /// Too many frames too fast, or a message that breaks the session rules (standard 1008).
    PolicyViolation,
    /// A frame larger than [`crate::MAX_FRAME_BYTES`] (standard 1009).
    MessageTooBig,
    /// The miner token was missing, malformed, expired or revoked. Fatal for the agent.
    Unauthorized,
    /// The agent speaks a protocol version this coordinator does not. Fatal for the agent.
    IncompatibleProtocol,
    /// No heartbeat within the timeout.
    HeartbeatTimeout,
    /// The same miner connected again; this older session was replaced.
    Replaced,
    /// The first frame was not a hello, or it came too late.
    HelloExpected,
    /// The miner is suspended by anti-cheat review. Fatal for the agent.
    Suspended,
}

impl CloseCode {
    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::PolicyViolation => 1008,
            Self::MessageTooBig => 1009,
            Self::Unauthorized => 4001,
            Self::IncompatibleProtocol => 4002,
            Self::HeartbeatTimeout => 4003,
            Self::Replaced => 4004,
            Self::HelloExpected => 4005,
            Self::Suspended => 4006,
        }
    }

    /// The close code for a numeric code received from the wire, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1001 => Self::GoingAway,
            1002 => Self::ProtocolError,
            1008 => Self::PolicyViolation,
            1009 => Self::MessageTooBig,
            4001 => Self::Unauthorized,
            4002 => Self::IncompatibleProtocol,
            4003 => Self::HeartbeatTimeout,
            4004 => Self::Replaced,
            4005 => Self::HelloExpected,
            4006 => Self::Suspended,
            _ => return None,
        })
    }

    /// Whether reconnecting cannot help: the agent must stop and tell its operator.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            Self::Unauthorized | Self::IncompatibleProtocol | Self::Suspended
        )
    }
}

#[cfg(test)]
mod tests {
    use super::CloseCode;

    #[test]
    fn codes_round_trip() {
        for code in [1001, 1002, 1008, 1009, 4001, 4002, 4003, 4004, 4005, 4006] {
            let parsed = CloseCode::from_code(code).expect("known code");
            assert_eq!(parsed.code(), code);
        }
        assert_eq!(CloseCode::from_code(1000), None);
    }

    #[test]
    fn only_auth_version_and_suspension_are_fatal() {
        assert!(CloseCode::Unauthorized.is_fatal());
        assert!(CloseCode::IncompatibleProtocol.is_fatal());
        assert!(CloseCode::Suspended.is_fatal());
        assert!(!CloseCode::GoingAway.is_fatal());
        assert!(!CloseCode::HeartbeatTimeout.is_fatal());
        assert!(!CloseCode::ProtocolError.is_fatal());
    }
}
