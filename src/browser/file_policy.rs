//! Which files of the broker's disk a context session's client may hand its pages
//! (`DOM.setFileInputFiles`, files dropped with `Input.dispatchDragEvent`): only the
//! session's own files, which it put there through the API (an upload) or a download.
//!
//! Chrome opens whatever path it is given and the page can then read it, so every path is
//! checked where it leads: absolute, no `..`, resolved through symlinks, a regular file
//! inside the session's files directory. Chrome is given the resolved path, not the
//! client's spelling. The directory's contents are written by the broker alone (names
//! checked, no links), so a path cannot change its meaning between the check and Chrome's
//! read.

use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Most files one command may name.
pub(crate) const MAX_FILES: usize = 100;

/// Why a list of files was refused, for the client's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("files must be a list of at most {MAX_FILES} paths")]
    NotAList,
    #[error("only the session's own files may be given to a page (upload them first): {0}")]
    Outside(String),
    #[error("this session has no files to give to a page")]
    NoFiles,
}

/// Reads a `files` list (at most [`MAX_FILES`] strings, read one at a time so that a
/// huge list is refused without being held) and answers each path resolved, if every one
/// is a file inside `dir`.
pub(crate) fn check_files(dir: Option<&Path>, files: &RawValue) -> Result<Vec<String>, Refused> {
    let paths = path_list(files)?;
    if paths.is_empty() {
        return Ok(paths); // clearing a file input
    }
    let dir = dir.ok_or(Refused::NoFiles)?;
    let root = std::fs::canonicalize(dir).map_err(|_| Refused::NoFiles)?;
    paths.iter().map(|path| resolve(&root, path)).collect()
}

fn resolve(root: &Path, path: &str) -> Result<String, Refused> {
    let outside = || Refused::Outside(path.chars().take(200).collect());
    let candidate = Path::new(path);
    let plain = candidate.is_absolute()
        && !path.contains('\0')
        && candidate
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(outside());
    }
    let resolved: PathBuf = std::fs::canonicalize(candidate).map_err(|_| outside())?;
    let is_file = std::fs::metadata(&resolved).is_ok_and(|m| m.is_file());
    if !is_file || !resolved.starts_with(root) {
        return Err(outside());
    }
    resolved.into_os_string().into_string().map_err(|_| outside())
}

fn path_list(raw: &RawValue) -> Result<Vec<String>, Refused> {
    struct Paths;
    impl<'de> Visitor<'de> for Paths {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_FILES} paths")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut paths = Vec::new();
            while let Some(path) = seq.next_element::<String>()? {
                if paths.len() == MAX_FILES {
                    return Err(serde::de::Error::custom("too many paths"));
                }
                paths.push(path);
            }
            Ok(paths)
        }
    }
    let mut reader = serde_json::Deserializer::from_str(raw.get());
    reader.deserialize_seq(Paths).map_err(|_| Refused::NotAList)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn list(paths: &[&str]) -> Box<RawValue> {
        raw(&serde_json::to_string(paths).unwrap())
    }

    #[test]
    fn only_files_inside_the_sessions_directory_pass() {
        let base = tempfile::tempdir().unwrap();
        let files = base.path().join("session/files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("cv.pdf"), b"cv").unwrap();
        std::fs::write(base.path().join("token_secret"), b"secret").unwrap();
        std::fs::create_dir_all(base.path().join("session/files-other")).unwrap();
        std::fs::write(base.path().join("session/files-other/x"), b"x").unwrap();
        std::os::unix::fs::symlink(base.path().join("token_secret"), files.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", files.join("etc")).unwrap();
        let cv = files.join("cv.pdf");
        let resolved = std::fs::canonicalize(&cv).unwrap().to_string_lossy().into_owned();

        assert_eq!(
            check_files(Some(&files), &list(&[cv.to_str().unwrap()])),
            Ok(vec![resolved])
        );
        assert_eq!(check_files(Some(&files), &list(&[])), Ok(vec![]));
        assert_eq!(check_files(None, &list(&[])), Ok(vec![]));
        let f = files.to_str().unwrap();
        for path in [
            "/etc/passwd".to_owned(),
            base.path().join("token_secret").to_string_lossy().into_owned(),
            format!("{f}/../../token_secret"),
            format!("{f}/link"),
            format!("{f}/etc/passwd"),
            format!("{f}-other/x"),
            format!("{f}/cv.pdf\0"),
            f.to_owned(),
            "cv.pdf".to_owned(),
            "files/cv.pdf".to_owned(),
            format!("{f}/missing"),
            String::new(),
        ] {
            let refused = check_files(Some(&files), &list(&[cv.to_str().unwrap(), &path]));
            assert!(matches!(refused, Err(Refused::Outside(_))), "{path:?}: {refused:?}");
        }
        assert_eq!(check_files(None, &list(&[cv.to_str().unwrap()])), Err(Refused::NoFiles));
    }

    #[test]
    fn what_is_not_a_short_list_of_paths_is_refused() {
        let many = list(&vec!["/x"; MAX_FILES + 1]);
        for bad in [
            raw("\"/etc/passwd\""),
            raw("[1]"),
            raw("{}"),
            raw("null"),
            raw("[[\"/x\"]]"),
            many,
        ] {
            assert_eq!(check_files(None, &bad), Err(Refused::NotAList), "{bad}");
        }
    }
}
