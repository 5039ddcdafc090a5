//! A directory inside a browser's reach (its downloads folder), changed by the broker
//! without following a link the browser could have put there.
//!
//! The browser may write its downloads folder, so it could swap a subdirectory or a file
//! there for a symbolic link to the broker's data directory; the broker, which is not
//! confined, would then write, remove or move what the link names (`token_secret`, another
//! session's files). Here every step is taken relative to a directory opened with
//! `O_NOFOLLOW` (its ancestors are the broker's, out of the browser's reach), and no step
//! follows a link at its last component: a link found is refused, or moved as a link and
//! removed, never followed.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};

/// A directory opened without following a link.
pub(crate) struct NoFollowDir(OwnedFd);

const DIR: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl NoFollowDir {
    /// Opens `path`, refused if it is a link (its ancestors are taken as they are: the
    /// caller's, out of the browser's reach).
    pub(crate) fn open(path: &Path) -> io::Result<NoFollowDir> {
        Ok(NoFollowDir(rustix::fs::open(path, DIR, Mode::empty())?))
    }

    /// Its subdirectory `name`, made if missing; refused if `name` is a link.
    pub(crate) fn subdir(&self, name: &str) -> io::Result<NoFollowDir> {
        match rustix::fs::mkdirat(&self.0, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(NoFollowDir(rustix::fs::openat(&self.0, name, DIR, Mode::empty())?))
    }

    /// Removes the entry `name` (a link itself, never what it names); none is no error.
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.0, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts the broker's file `from` here as `name` (none of that name may be there): a
    /// hard link where the file system allows, else a copy into a file made new.
    pub(crate) fn place(&self, from: &Path, name: &str) -> io::Result<()> {
        if rustix::fs::linkat(CWD, from, &self.0, name, AtFlags::empty()).is_ok() {
            return Ok(());
        }
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut to = File::from(rustix::fs::openat(&self.0, name, flags, Mode::from_raw_mode(0o644))?);
        io::copy(&mut File::open(from)?, &mut to)?;
        Ok(())
    }

    /// The size of `name` if it is a regular file (not a link).
    pub(crate) fn file_size(&self, name: &str) -> Option<u64> {
        let stat = rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile).then_some(stat.st_size as u64)
    }

    /// Moves the regular file `name` out to `to` (the broker's): renamed where the file
    /// system allows, else copied from the file opened here and removed. A link or
    /// anything but a regular file is removed, not moved, and answers an error.
    pub(crate) fn move_out(&self, name: &str, to: &Path) -> io::Result<u64> {
        let not_a_file = || io::Error::new(io::ErrorKind::InvalidData, "not a regular file");
        let stat = rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            let _ = self.remove(name);
            return Err(not_a_file());
        }
        match rustix::fs::renameat(&self.0, name, CWD, to) {
            Ok(()) => {
                // Swapped for a link between the check and the rename: the link moved,
                // not what it names; it goes.
                let moved = std::fs::symlink_metadata(to)?;
                if !moved.file_type().is_file() {
                    let _ = std::fs::remove_file(to);
                    return Err(not_a_file());
                }
                Ok(moved.len())
            }
            Err(rustix::io::Errno::XDEV) => {
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let mut from = File::from(rustix::fs::openat(&self.0, name, flags, Mode::empty())?);
                if !from.metadata()?.file_type().is_file() {
                    return Err(not_a_file());
                }
                let copied = io::copy(&mut from, &mut File::create(to)?)?;
                self.remove(name)?;
                Ok(copied)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker's own directory with a secret, and a browser folder beside it.
    fn victim() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("token_secret"), b"the broker's secret").unwrap();
        let downloads = root.path().join("downloads");
        std::fs::create_dir(&downloads).unwrap();
        (root, data, downloads)
    }

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_linked_uploads_folder_is_refused_and_what_it_names_is_untouched() {
        let (_root, data, downloads) = victim();
        std::os::unix::fs::symlink(&data, downloads.join(".uploads")).unwrap();
        let before = listing(&data);
        let upload = _root.path().join("upload");
        std::fs::write(&upload, b"the tenant's bytes").unwrap();
        let dir = NoFollowDir::open(&downloads).unwrap();
        assert!(
            dir.subdir(".uploads").is_err(),
            "a link was followed as the uploads folder"
        );
        assert_eq!(listing(&data), before, "the data directory changed");
    }

    #[test]
    fn a_linked_downloads_folder_is_refused() {
        let (_root, data, downloads) = victim();
        let linked = downloads.join("sess_1");
        std::os::unix::fs::symlink(&data, &linked).unwrap();
        assert!(NoFollowDir::open(&linked).is_err());
    }

    #[test]
    fn a_placed_file_replaces_no_link_target() {
        let (root, data, downloads) = victim();
        let before = listing(&data);
        let uploads = NoFollowDir::open(&downloads).unwrap().subdir(".uploads").unwrap();
        // The browser put a link where the upload goes.
        std::os::unix::fs::symlink(data.join("token_secret"), downloads.join(".uploads/token_secret")).unwrap();
        let upload = root.path().join("upload");
        std::fs::write(&upload, b"the tenant's bytes").unwrap();
        uploads.remove("token_secret").unwrap();
        uploads.place(&upload, "token_secret").unwrap();
        assert_eq!(listing(&data), before, "the data directory changed");
        assert_eq!(
            std::fs::read(downloads.join(".uploads/token_secret")).unwrap(),
            b"the tenant's bytes"
        );
    }

    #[test]
    fn a_link_is_never_moved_out_as_the_file_it_names() {
        let (root, data, downloads) = victim();
        let before = listing(&data);
        std::os::unix::fs::symlink(data.join("token_secret"), downloads.join("report.pdf")).unwrap();
        let files = root.path().join("files");
        std::fs::create_dir(&files).unwrap();
        let dir = NoFollowDir::open(&downloads).unwrap();
        assert!(dir.move_out("report.pdf", &files.join("report.pdf")).is_err());
        assert_eq!(listing(&data), before, "the secret moved");
        assert!(listing(&files).is_empty(), "something reached the session's files");
        assert!(!downloads.join("report.pdf").exists(), "the link stays");
        // A regular file moves, bytes and size.
        std::fs::write(downloads.join("real.txt"), b"downloaded").unwrap();
        assert_eq!(dir.move_out("real.txt", &files.join("real.txt")).unwrap(), 10);
        assert_eq!(std::fs::read(files.join("real.txt")).unwrap(), b"downloaded");
    }
}
