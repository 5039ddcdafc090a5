//! Whose fault an error is. Domain modules keep their own small error types and say which
//! origin each has; `http` alone turns them into status codes, and the logs and
//! `/metrics` count them by origin.

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request: bad input, a wrong key, an unknown or ended session, a limit reached.
    Client,
    /// A browser or a user's upstream endpoint: it crashed, refused, or did not answer.
    Upstream,
    /// The broker: out of capacity, a disk that failed, a bug.
    Internal,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Client => "client",
            Origin::Upstream => "upstream",
            Origin::Internal => "internal",
        }
    }
}
