//! Why an action failed.

/// Why an action failed, in words a person can act on (`error` in the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActionError(pub String);

impl ActionError {
    pub(crate) fn new(message: impl Into<String>) -> ActionError {
        ActionError(message.into())
    }

    pub(super) fn cdp(method: &str, message: String) -> ActionError {
        ActionError(format!("The browser refused {method}: {message}"))
    }

    /// The script context went away (the page navigated): worth one more try.
    pub(super) fn is_lost_context(&self) -> bool {
        [
            "Cannot find context",
            "Execution context was destroyed",
            "Inspected target navigated",
        ]
        .iter()
        .any(|m| self.0.contains(m))
    }
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
