//! The script the identity keeper puts in each frame's main world before its page runs
//! (`Page.addScriptToEvaluateOnNewDocument`) and runs in each worker before its script does
//! (`Runtime.evaluate` while the worker waits for the debugger), for a session with a
//! fingerprint: its patch (`fingerprint_patch.js`) after the part that makes what it
//! patches read as native (`native.js`), which later parts can share. The headless shell's
//! own patch (`stealth::SHELL_PATCH`) is a script of its own.
//!
//! No console patch: wrapping `console.log` and the like in a page's world (to keep a
//! client's `Runtime.enable` out of its sight) puts the wrapper's frame on top of every
//! console message's stack trace, so clients (Puppeteer's and Playwright's
//! `location()`, DevTools) and `capture_console` would name the patch instead of the
//! page's line (measured on 156).

use serde_json::Value;

/// An expression: patches `Function.prototype.toString` and gives `native(fresh, original)`.
const NATIVE: &str = include_str!("native.js");

/// A function expression of `native` and the fingerprint's config.
const FINGERPRINT: &str = include_str!("fingerprint_patch.js");

/// The script for one target of a session with a fingerprint; `config` is what its part
/// sets there ([`super::fingerprint::patch_config`]).
pub(crate) fn script(config: &Value) -> String {
    format!("(() => {{\nconst native = {NATIVE};\n({FINGERPRINT})(native, {config});\n}})();\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_are_expressions_put_together_once() {
        let with = script(&json!({"platform": "Win32"}));
        assert!(with.contains("(native, {\"platform\":\"Win32\"})"));
        assert_eq!(with.matches("defineProperty(Function.prototype, 'toString'").count(), 1);
        for part in [NATIVE, FINGERPRINT] {
            assert!(!part.trim_end().ends_with(';'), "a part must be an expression");
        }
    }
}
