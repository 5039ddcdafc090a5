//! File names: a client's checked (refused rather than changed), a page's made safe.

use std::path::Path;

use super::error::FileError;

/// The longest file name kept, in bytes (most file systems allow 255).
pub(super) const MAX_NAME_BYTES: usize = 200;

/// Checks a name given by a client (an upload, a path segment): refused rather than
/// changed, so that the name a client uses is the name stored.
pub(super) fn check_name(name: &str) -> Result<(), FileError> {
    if name.is_empty() {
        return Err(FileError::BadName("a file name cannot be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FileError::BadName("a file name is at most 200 bytes"));
    }
    if name.contains(['/', '\\']) {
        return Err(FileError::BadName("a file name cannot contain / or \\"));
    }
    if name.chars().any(char::is_control) {
        return Err(FileError::BadName("a file name cannot contain control characters"));
    }
    if name.starts_with('.') {
        return Err(FileError::BadName("a file name cannot start with a dot"));
    }
    Ok(())
}

/// A safe name from one a page suggested (a download's): separators and control
/// characters become `_`, leading dots go, long names are cut (keeping the extension).
pub(super) fn sanitize_name(suggested: &str) -> String {
    let cleaned: String = suggested
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').trim();
    let mut name = if cleaned.is_empty() {
        "download".to_owned()
    } else {
        cleaned.to_owned()
    };
    if name.len() > MAX_NAME_BYTES {
        let ext = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .filter(|e| e.len() <= 16)
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let mut cut = MAX_NAME_BYTES - ext.len();
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name = format!("{}{ext}", &name[..cut]);
    }
    name
}

/// `name`, or `name (1).ext`, `name (2).ext`… whichever `taken` does not hold.
pub(super) fn unique_name(name: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(name) {
        return name.to_owned();
    }
    let path = Path::new(name);
    let (stem, ext) = match (
        path.file_stem().and_then(|s| s.to_str()),
        path.extension().and_then(|e| e.to_str()),
    ) {
        (Some(stem), Some(ext)) if !stem.is_empty() => (stem.to_owned(), format!(".{ext}")),
        _ => (name.to_owned(), String::new()),
    };
    (1..)
        .map(|n| format!("{stem} ({n}){ext}"))
        .find(|candidate| !taken(candidate))
        .expect("an unused name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_refused_when_they_could_leave_the_directory() {
        for bad in [
            "",
            "..",
            ".",
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "nul\0byte",
            "tab\there",
            ".hidden",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"x".repeat(10_000)).is_err());
        for good in ["resume.pdf", "Résumé 2026 (final).docx", "a..b", "日本語.txt"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn suggested_names_are_made_safe() {
        assert_eq!(sanitize_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(sanitize_name("..."), "download");
        assert_eq!(sanitize_name("a\0b\nc.txt"), "a_b_c.txt");
        let long = sanitize_name(&format!("{}.pdf", "é".repeat(500)));
        assert!(long.len() <= MAX_NAME_BYTES && long.ends_with(".pdf"), "{long}");
        assert!(check_name(&sanitize_name("/.x/..\\y\u{7f}")).is_ok());
    }

    #[test]
    fn taken_names_get_a_number() {
        let taken = ["a.pdf", "a (1).pdf", "noext"];
        assert_eq!(unique_name("a.pdf", |n| taken.contains(&n)), "a (2).pdf");
        assert_eq!(unique_name("noext", |n| taken.contains(&n)), "noext (1)");
        assert_eq!(unique_name("b.pdf", |n| taken.contains(&n)), "b.pdf");
    }
}
