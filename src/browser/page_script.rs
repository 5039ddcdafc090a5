//! The script the identity keeper puts in each frame's main world before its page runs
//! (`Page.addScriptToEvaluateOnNewDocument`) and runs in each worker before its script does
//! (`Runtime.evaluate` while the worker waits for the debugger). One script per target,
//! of parts that share one way to make what they patch read as native (`native.js`):
//! always the console patch (`console_patch.js`: a client's `Runtime.enable` does not show
//! through console calls), and with a session's fingerprint its patch
//! (`fingerprint_patch.js`). The headless shell's own patch (`stealth::SHELL_PATCH`) is a
//! script of its own.

use serde_json::Value;

/// An expression: patches `Function.prototype.toString` and gives `native(fresh, original)`.
const NATIVE: &str = include_str!("native.js");

/// A function expression of `native`.
const CONSOLE: &str = include_str!("console_patch.js");

/// A function expression of `native` and the fingerprint's config.
const FINGERPRINT: &str = include_str!("fingerprint_patch.js");

/// The script for one target; `fingerprint` is the config of the fingerprint's part
/// ([`super::fingerprint::patch_config`]), none without a fingerprint.
pub(crate) fn script(fingerprint: Option<&Value>) -> String {
    let mut script = format!("(() => {{\nconst native = {NATIVE};\n({CONSOLE})(native);\n");
    if let Some(config) = fingerprint {
        script.push_str(&format!("({FINGERPRINT})(native, {config});\n"));
    }
    script.push_str("})();\n");
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_are_expressions_put_together_once() {
        let plain = script(None);
        assert_eq!(plain.matches("Function.prototype, 'toString'").count(), 1);
        assert!(!plain.contains("WebGLRenderingContext"));
        let with = script(Some(&json!({"platform": "Win32"})));
        assert!(with.contains("(native, {\"platform\":\"Win32\"})"));
        // The toString patch is applied once, shared by both parts.
        assert_eq!(with.matches("Function.prototype, 'toString'").count(), 1);
        for part in [NATIVE, CONSOLE, FINGERPRINT] {
            assert!(!part.trim_end().ends_with(';'), "a part must be an expression");
        }
    }
}
