//! What the capture's documents share: their bounds, times and cut texts.

/// The per-session bounds (config keys `max_log_entries_per_session`,
/// `max_log_bytes_per_session`, `max_har_entries_per_session`, `max_har_body_bytes`,
/// `max_har_bodies_bytes_per_session`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) log_entries: usize,
    pub(crate) log_bytes: usize,
    pub(crate) har_entries: usize,
    pub(crate) body_bytes: usize,
    pub(crate) bodies_bytes: usize,
}

/// RFC 3339 to the millisecond of a CDP wall time (ms since the epoch).
pub(crate) fn wall_time_ms(ms: f64) -> String {
    let ms = if ms.is_finite() && ms > 0.0 { ms } else { 0.0 };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros((ms * 1000.0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// At most `max` bytes of `text`, cut on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
