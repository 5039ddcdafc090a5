//! The script the identity keeper puts in each frame's main world before its page runs
//! (`Page.addScriptToEvaluateOnNewDocument`) and runs in each worker before its script does
//! (`Runtime.evaluate` while the worker waits for the debugger): the part that makes what
//! the others patch read as native (`native.js`, which patches `Function.prototype.toString`
//! once), then the headless shell's part (`shell_patch.js`: on the shell's pages) and the
//! fingerprint's (`fingerprint_patch.js`: on a session with a fingerprint), both given that
//! one `native`. Two scripts would each patch `toString`, the second wrapping the first.
//!
//! No console patch: wrapping `console.log` and the like in a page's world (to keep a
//! client's `Runtime.enable` out of its sight) puts the wrapper's frame on top of every
//! console message's stack trace, so clients (Puppeteer's and Playwright's
//! `location()`, DevTools) and `capture_console` would name the patch instead of the
//! page's line (measured on 156).

use serde_json::Value;

/// An expression: patches `Function.prototype.toString` and gives `native(fresh, original)`.
const NATIVE: &str = include_str!("native.js");

/// A function expression of `native`: what the headless shell lacks beside the full
/// Chromium.
const SHELL: &str = include_str!("shell_patch.js");

/// A function expression of `native` and the fingerprint's config.
const FINGERPRINT: &str = include_str!("fingerprint_patch.js");

/// The script for one target: with `shell` (a page of the headless shell) the shell's part,
/// with `fingerprint` (what its part sets there, `fingerprint::patch_config`) the
/// fingerprint's. None when neither applies.
pub(crate) fn script(shell: bool, fingerprint: Option<&Value>) -> Option<String> {
    if !shell && fingerprint.is_none() {
        return None;
    }
    let part = str::trim_end;
    let mut script = format!("(() => {{\nconst native = {};\n", part(NATIVE));
    if shell {
        script.push_str(&format!("({})(native);\n", part(SHELL)));
    }
    if let Some(config) = fingerprint {
        script.push_str(&format!("({})(native, {config});\n", part(FINGERPRINT)));
    }
    script.push_str("})();\n");
    Some(script)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_are_expressions_put_together_once() {
        let config = json!({"platform": "Win32"});
        let both = script(true, Some(&config)).unwrap();
        assert!(both.contains("(native, {\"platform\":\"Win32\"})"));
        assert!(both.contains(")(native);\n"));
        // One `native` for both parts: toString is patched once, not wrapped twice.
        assert_eq!(both.matches("defineProperty(Function.prototype, 'toString'").count(), 1);
        assert_eq!(both.matches(NATIVE.trim_end()).count(), 1);
        let shell = script(true, None).unwrap();
        assert!(!shell.contains("webglVendor"));
        assert!(!script(false, Some(&config)).unwrap().contains("PluginArray"));
        assert_eq!(script(false, None), None);
        for part in [NATIVE, SHELL, FINGERPRINT] {
            assert!(!part.trim_end().ends_with(';'), "a part must be an expression");
        }
    }
}
