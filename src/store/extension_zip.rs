//! A zip of an unpacked Manifest V3 Chrome extension, checked before a byte of it is kept:
//! bounded in size and entries, every name a plain relative path (no `..`, no absolute
//! path, no backslash, no drive letter), only files and directories (no symlink, no device),
//! no name twice, `manifest.json` at the root or in a single top folder, and a manifest
//! Chrome would load as V3. Unpacking reads each entry within what is left of the cap,
//! whatever its header declares.

use std::collections::HashSet;
use std::io::{Cursor, Read};
use std::path::Path;

use serde_json::Value;
use zip::{CompressionMethod, ZipArchive};

/// Largest zip accepted, in bytes.
pub const MAX_ZIP_BYTES: usize = 10 * 1024 * 1024;
/// Most bytes one extension may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 50 * 1024 * 1024;
/// Most entries (files and directories) one zip may hold.
pub const MAX_ENTRIES: usize = 2000;
/// Longest entry name, in bytes.
const MAX_NAME_BYTES: usize = 1024;
/// Longest name of one file or folder (the file system's own limit).
const MAX_COMPONENT_BYTES: usize = 255;
/// Largest `manifest.json`.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Permissions an extension may not ask for. `proxy`: Chrome lets an extension's proxy
/// setting override `--proxy-server` (measured on Chromium 156: with `mode: "direct"` a
/// page reached loopback around the gateway, so around the egress policy); `privacy`: it
/// can change the WebRTC IP handling policy, letting UDP go around the gateway;
/// `nativeMessaging`: it starts a program of the host's.
const DENIED_PERMISSIONS: &[&str] = &["proxy", "privacy", "nativeMessaging"];

/// What the manifest says of the extension.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub manifest_version: u64,
}

/// A zip that passed every check, with the entries to unpack.
#[derive(Debug)]
pub struct Checked {
    pub manifest: Manifest,
    /// (index in the zip, path under the extension's directory, is a directory).
    entries: Vec<(usize, String, bool)>,
}

/// Why a zip was refused (the client's fault), or the disk failed (the broker's).
#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    #[error("{0}")]
    Refused(String),
    #[error("cannot write the extension: {0}")]
    Io(#[from] std::io::Error),
}

fn refused(why: impl Into<String>) -> ZipError {
    ZipError::Refused(why.into())
}

/// Checks `bytes` as an extension's zip; nothing is written.
pub fn check(bytes: &[u8]) -> Result<Checked, ZipError> {
    if bytes.len() > MAX_ZIP_BYTES {
        return Err(refused(format!("the zip is larger than {MAX_ZIP_BYTES} bytes")));
    }
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| refused(format!("not a readable zip: {e}")))?;
    if zip.len() > MAX_ENTRIES {
        return Err(refused(format!(
            "the zip has {} entries, more than {MAX_ENTRIES}",
            zip.len()
        )));
    }
    let mut names: Vec<(usize, String, bool)> = Vec::with_capacity(zip.len());
    let mut declared: u64 = 0;
    for index in 0..zip.len() {
        let entry = zip
            .by_index_raw(index)
            .map_err(|e| refused(format!("entry {index} is unreadable: {e}")))?;
        let raw = entry.name_raw();
        let name = std::str::from_utf8(raw).map_err(|_| refused(format!("entry {index}'s name is not UTF-8")))?;
        let dir = entry.is_dir();
        let path = checked_name(name)?;
        if entry.is_symlink() || !plain_type(entry.unix_mode()) {
            return Err(refused(format!(
                "{name:?} is not a plain file or directory (a link or a device)"
            )));
        }
        if entry.encrypted() {
            return Err(refused(format!("{name:?} is encrypted")));
        }
        if !dir
            && !matches!(
                entry.compression(),
                CompressionMethod::Stored | CompressionMethod::Deflated
            )
        {
            return Err(refused(format!(
                "{name:?} is compressed with a method other than deflate"
            )));
        }
        declared = declared.saturating_add(entry.size());
        names.push((index, path, dir));
    }
    if declared > MAX_UNPACKED_BYTES {
        return Err(refused(format!(
            "the zip unpacks to more than {MAX_UNPACKED_BYTES} bytes"
        )));
    }
    let entries = layout(names)?;
    let manifest_index = entries
        .iter()
        .find(|(_, path, dir)| path == "manifest.json" && !dir)
        .map(|(i, _, _)| *i)
        .ok_or_else(|| refused("no manifest.json at the zip's root or in its single top folder"))?;
    let mut text = Vec::new();
    zip.by_index(manifest_index)
        .map_err(|e| refused(format!("manifest.json is unreadable: {e}")))?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| refused(format!("manifest.json is unreadable: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(refused(format!(
            "manifest.json is larger than {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let manifest = parse_manifest(&text)?;
    Ok(Checked { manifest, entries })
}

/// Whether a Unix mode names a plain file or directory: no type bits at all (Python's
/// `zipfile.writestr` writes permissions only), a regular file or a directory; not a link,
/// a device, a FIFO or a socket.
fn plain_type(mode: Option<u32>) -> bool {
    matches!(mode.map(|m| m & 0o170000), None | Some(0 | 0o100000 | 0o040000))
}

/// `name` as a relative path of plain components (a directory's trailing `/` removed).
fn checked_name(name: &str) -> Result<String, ZipError> {
    let bad = |why: &str| refused(format!("entry name {name:?} {why}"));
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(bad(&format!("must be 1 to {MAX_NAME_BYTES} bytes")));
    }
    if name.starts_with('/') {
        return Err(bad("is an absolute path"));
    }
    if name.contains('\\') {
        return Err(bad("holds a backslash"));
    }
    if name.contains(':') {
        return Err(bad("holds a colon (a drive letter or a stream)"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("holds a control character"));
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    for part in trimmed.split('/') {
        match part {
            "" => return Err(bad("has an empty path component")),
            "." | ".." => return Err(bad("has a . or .. component")),
            part if part.len() > MAX_COMPONENT_BYTES => {
                return Err(bad(&format!("has a component over {MAX_COMPONENT_BYTES} bytes")));
            }
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// The entries with the single top folder stripped when `manifest.json` is there and not
/// at the root; refuses a name given twice and a file that another entry is under.
fn layout(names: Vec<(usize, String, bool)>) -> Result<Vec<(usize, String, bool)>, ZipError> {
    let mut seen = HashSet::new();
    let mut files = HashSet::new();
    for (_, path, dir) in &names {
        if !seen.insert(path.as_str()) {
            return Err(refused(format!("{path:?} is in the zip twice")));
        }
        if !dir {
            files.insert(path.as_str());
        }
    }
    for (_, path, _) in &names {
        let mut at = 0;
        while let Some(slash) = path[at..].find('/') {
            let parent = &path[..at + slash];
            if files.contains(parent) {
                return Err(refused(format!("{path:?} is under {parent:?}, which is a file")));
            }
            at += slash + 1;
        }
    }
    if files.contains("manifest.json") {
        return Ok(names);
    }
    let top = names
        .first()
        .and_then(|(_, p, _)| p.split('/').next())
        .unwrap_or_default()
        .to_owned();
    let prefix = format!("{top}/");
    let under_top = |p: &str| p == top || p.starts_with(&prefix);
    if top.is_empty()
        || !names.iter().all(|(_, p, _)| under_top(p))
        || !files.contains(format!("{prefix}manifest.json").as_str())
    {
        return Err(refused(
            "no manifest.json at the zip's root or in its single top folder",
        ));
    }
    Ok(names
        .into_iter()
        .filter(|(_, p, _)| p != &top)
        .map(|(i, p, d)| (i, p[prefix.len()..].to_owned(), d))
        .collect())
}

/// Name, version and manifest version of a Manifest V3 extension's `manifest.json`.
fn parse_manifest(text: &[u8]) -> Result<Manifest, ZipError> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let value: Value =
        serde_json::from_slice(text).map_err(|e| refused(format!("manifest.json is not valid JSON: {e}")))?;
    let Value::Object(manifest) = value else {
        return Err(refused("manifest.json must be a JSON object"));
    };
    match manifest.get("manifest_version").and_then(Value::as_u64) {
        Some(3) => {}
        Some(2) => {
            return Err(refused(
                "manifest_version is 2: Manifest V2 extensions are not supported (Chrome no longer loads them); use manifest_version 3",
            ));
        }
        _ => return Err(refused("manifest.json must say \"manifest_version\": 3")),
    }
    for field in ["permissions", "optional_permissions"] {
        let asked = manifest.get(field).and_then(Value::as_array).into_iter().flatten();
        if let Some(denied) = asked.filter_map(Value::as_str).find(|p| DENIED_PERMISSIONS.contains(p)) {
            return Err(refused(format!(
                "{field} holds {denied:?}, which no session's extension may have: it would take the browser's traffic \
                 around the broker's gateway (proxy, privacy) or start programs on the host (nativeMessaging)"
            )));
        }
    }
    let name = match manifest.get("name") {
        Some(Value::String(n)) if !n.trim().is_empty() && n.chars().count() <= 200 => n.clone(),
        _ => return Err(refused("manifest.json must have a \"name\" of 1 to 200 characters")),
    };
    let version = match manifest.get("version") {
        Some(Value::String(v)) if valid_version(v) => v.clone(),
        _ => {
            return Err(refused(
                "manifest.json must have a \"version\" of one to four dot-separated integers (\"1.0.2\")",
            ));
        }
    };
    Ok(Manifest {
        name,
        version,
        manifest_version: 3,
    })
}

/// Chrome's extension version: one to four dot-separated integers of at most 65535.
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    (1..=4).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        })
}

/// Writes `checked`'s entries under `dest` (a fresh, empty directory), each within what is
/// left of [`MAX_UNPACKED_BYTES`]; the bytes written.
pub fn unpack(bytes: &[u8], checked: &Checked, dest: &Path) -> Result<u64, ZipError> {
    let mut zip = ZipArchive::new(Cursor::new(bytes)).map_err(|e| refused(format!("not a readable zip: {e}")))?;
    let mut written: u64 = 0;
    for (index, path, dir) in &checked.entries {
        let target = dest.join(path);
        if *dir {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let entry = zip
            .by_index(*index)
            .map_err(|e| refused(format!("{path:?} is unreadable: {e}")))?;
        // A new file: nothing already there is written through.
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&target)?;
        let left = MAX_UNPACKED_BYTES - written;
        let copied = std::io::copy(&mut entry.take(left + 1), &mut out).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::Other => {
                refused(format!("{path:?} is corrupt: {e}"))
            }
            _ => ZipError::Io(e),
        })?;
        if copied > left {
            return Err(refused(format!(
                "{path:?} is larger than its header says: the zip unpacks to more than {MAX_UNPACKED_BYTES} bytes"
            )));
        }
        written += copied;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_relative_paths() {
        for good in ["manifest.json", "a/b.js", "dir/", "_locales/en/messages.json"] {
            assert!(checked_name(good).is_ok(), "{good}");
        }
        for bad in [
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "C:/x",
            "c:x",
            "a\\..\\b",
            "a//b",
            "./a",
            "a/./b",
            "",
            "a\0b",
        ] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_top_folder_is_stripped_and_duplicates_refused() {
        let e = |p: &str, d: bool| (0, p.to_owned(), d);
        let stripped = layout(vec![
            e("ext", true),
            e("ext/manifest.json", false),
            e("ext/c.js", false),
        ])
        .unwrap();
        let paths: Vec<_> = stripped.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(paths, ["manifest.json", "c.js"]);
        assert!(layout(vec![e("a/manifest.json", false), e("b/c.js", false)]).is_err());
        assert!(layout(vec![e("manifest.json", false), e("manifest.json", false)]).is_err());
        assert!(layout(vec![e("manifest.json", false), e("x", false), e("x/y", false)]).is_err());
    }

    #[test]
    fn only_files_and_directories_are_plain() {
        for plain in [None, Some(0o600), Some(0o100644), Some(0o040755)] {
            assert!(plain_type(plain), "{plain:?}");
        }
        for special in [0o120777, 0o020644, 0o060644, 0o010644, 0o140755] {
            assert!(!plain_type(Some(special)), "{special:o}");
        }
    }

    #[test]
    fn versions_are_chromes() {
        for good in ["1", "1.0", "1.2.3.4", "65535.0"] {
            assert!(valid_version(good), "{good}");
        }
        for bad in ["", "1.", "1.2.3.4.5", "v1", "65536", "1.-2", "1 .2"] {
            assert!(!valid_version(bad), "{bad}");
        }
    }
}
