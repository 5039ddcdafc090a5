//! The script the identity keeper puts in each frame's main world before its page runs
//! (`Page.addScriptToEvaluateOnNewDocument`) and runs in each worker before its script does
//! (`Runtime.evaluate` while the worker waits for the debugger): first the part that makes
//! what the others patch read as native (`native.js`, which patches
//! `Function.prototype.toString` once) and the console patch (`console_patch.js`: a
//! client's `Runtime.enable` does not show through console calls), both from
//! [`console_patch::script_head`], which fixes where the console wrapper stands; then the
//! headless shell's part (`shell_patch.js`: on the shell's pages) and the fingerprint's
//! (`fingerprint_patch.js`: on a session with a fingerprint), given that one `native`. Two
//! scripts would each patch `toString`, the second wrapping the first.

use crate::console_patch;
use serde_json::Value;

/// A function expression of `native`: what the headless shell lacks beside the full
/// Chromium.
const SHELL: &str = include_str!("shell_patch.js");

/// A function expression of `native` and the fingerprint's config.
const FINGERPRINT: &str = include_str!("fingerprint_patch.js");

/// The script for one target: the console patch, with `shell` (a page of the headless
/// shell) the shell's part, with `fingerprint` (what its part sets there,
/// `fingerprint::patch_config`) the fingerprint's.
pub(crate) fn script(shell: bool, fingerprint: Option<&Value>) -> String {
    let part = str::trim_end;
    let mut script = console_patch::script_head().to_owned();
    if shell {
        script.push_str(&format!("({})(native);\n", part(SHELL)));
    }
    if let Some(config) = fingerprint {
        script.push_str(&format!("({})(native, {config});\n", part(FINGERPRINT)));
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
        let config = json!({"platform": "Win32"});
        let both = script(true, Some(&config));
        assert!(both.contains("(native, {\"platform\":\"Win32\"})"));
        assert!(both.contains(")(native);\n"));
        // One `native` for both parts: toString is patched once, not wrapped twice.
        assert_eq!(both.matches("defineProperty(Function.prototype, 'toString'").count(), 1);
        assert_eq!(both.matches(console_patch::NATIVE.trim_end()).count(), 1);
        let shell = script(true, None);
        assert!(!shell.contains("webglVendor"));
        assert!(!script(false, Some(&config)).contains("PluginArray"));
        // Every script starts with the console patch, where its call sites are known.
        let plain = script(false, None);
        assert!(plain.starts_with(console_patch::script_head()));
        assert!(!plain.contains("PluginArray") && !plain.contains("webglVendor"));
        for part in [console_patch::NATIVE, SHELL, FINGERPRINT] {
            assert!(!part.trim_end().ends_with(';'), "a part must be an expression");
        }
    }
}
