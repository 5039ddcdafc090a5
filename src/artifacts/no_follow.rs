//! A directory inside a browser's reach (its downloads folder), changed by the broker
//! without following a link the browser could have put there.
//!
//! The browser may write its downloads folder, so it could swap a subdirectory or a file
//! there for a symbolic link to the broker's data directory; the broker, which is not
//! confined, would then write, remove or move what the link names (`token_secret`, another
//! session's files). Here every step is taken relative to a directory opened with
//! `O_NOFOLLOW` (its ancestors are the broker's, out of the browser's reach), and no step
//! follows a link at its last component: a link found is refused or removed, never
//! followed. Files cross between the browser's folder and the broker's as copies, never as
//! links or renames, so the browser cannot write into the broker's copy afterwards.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

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

    /// Puts a copy of the broker's file `from` here as `name` (none of that name may be
    /// there). A copy, never a hard link: the browser may write this folder, and a link
    /// would let it change the broker's stored file (another tenant's, in a shared one).
    pub(crate) fn place(&self, from: &Path, name: &str) -> io::Result<()> {
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

    /// Copies the regular file `name` out to `to` (a new file of the broker's), at most
    /// `limit` bytes, and removes it here. A copy, never a rename: the browser could hold
    /// the file open or keep a second link to it and go on writing into the session's
    /// files past their quota. Opened without following a link and without blocking (a
    /// pipe put in its place answers at once, and is refused as not a regular file); more
    /// than `limit` bytes (it grew since it was measured) is refused.
    pub(crate) fn move_out(&self, name: &str, to: &Path, limit: u64) -> io::Result<u64> {
        let refused = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let opened = rustix::fs::openat(&self.0, name, flags, Mode::empty());
        let from = match opened {
            Ok(fd) => File::from(fd),
            Err(e) => {
                let _ = self.remove(name);
                return Err(e.into());
            }
        };
        if !from.metadata()?.file_type().is_file() {
            let _ = self.remove(name);
            return Err(refused("not a regular file"));
        }
        let copied = match std::fs::OpenOptions::new().write(true).create_new(true).open(to) {
            Ok(mut file) => {
                let copied = io::copy(&mut io::Read::take(&from, limit + 1), &mut file);
                let copied = copied.and_then(|n| match n > limit {
                    true => Err(refused("it grew past the size it was taken at")),
                    false => Ok(n),
                });
                // Only what this made goes: a file already there is not ours to remove.
                if copied.is_err() {
                    let _ = std::fs::remove_file(to);
                }
                copied
            }
            Err(e) => Err(e),
        };
        self.remove(name)?;
        copied
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
    fn a_link_planted_where_a_file_is_placed_is_not_written_through() {
        let (root, data, downloads) = victim();
        let before = listing(&data);
        let uploads = NoFollowDir::open(&downloads).unwrap().subdir(".uploads").unwrap();
        // The browser put a link where the upload goes, after the broker cleared the name.
        uploads.remove("token_secret").unwrap();
        std::os::unix::fs::symlink(data.join("token_secret"), downloads.join(".uploads/token_secret")).unwrap();
        let upload = root.path().join("upload");
        std::fs::write(&upload, b"the tenant's bytes").unwrap();
        assert!(uploads.place(&upload, "token_secret").is_err());
        assert_eq!(listing(&data), before, "the data directory changed");
        // Cleared again, the copy is placed; writing it leaves the broker's file as it was.
        uploads.remove("token_secret").unwrap();
        uploads.place(&upload, "token_secret").unwrap();
        let placed = downloads.join(".uploads/token_secret");
        assert_eq!(std::fs::read(&placed).unwrap(), b"the tenant's bytes");
        std::fs::write(&placed, b"changed by the browser").unwrap();
        assert_eq!(
            std::fs::read(&upload).unwrap(),
            b"the tenant's bytes",
            "a link, not a copy"
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
        assert!(dir.move_out("report.pdf", &files.join("report.pdf"), 1 << 20).is_err());
        assert_eq!(listing(&data), before, "the secret moved");
        assert!(listing(&files).is_empty(), "something reached the session's files");
        assert!(!downloads.join("report.pdf").exists(), "the link stays");
        // A pipe or a directory in a download's place: refused at once, nothing taken.
        rustix::fs::mkfifoat(rustix::fs::CWD, downloads.join("pipe"), Mode::from_raw_mode(0o644)).unwrap();
        assert!(dir.move_out("pipe", &files.join("pipe"), 1 << 20).is_err());
        std::fs::create_dir(downloads.join("folder")).unwrap();
        assert!(dir.move_out("folder", &files.join("folder"), 1 << 20).is_err());
        assert!(listing(&files).is_empty());
        // A regular file is copied out, bytes and size, and goes from the browser's folder;
        // one grown past the size it was measured at is refused.
        std::fs::write(downloads.join("real.txt"), b"downloaded").unwrap();
        assert_eq!(dir.move_out("real.txt", &files.join("real.txt"), 10).unwrap(), 10);
        assert_eq!(std::fs::read(files.join("real.txt")).unwrap(), b"downloaded");
        assert!(!downloads.join("real.txt").exists());
        std::fs::write(downloads.join("grown.bin"), vec![1u8; 100]).unwrap();
        assert!(dir.move_out("grown.bin", &files.join("grown.bin"), 10).is_err());
        assert!(!files.join("grown.bin").exists());
        // A file already where the copy goes is left as it was.
        std::fs::write(files.join("taken.txt"), b"already here").unwrap();
        std::fs::write(downloads.join("taken.txt"), b"new").unwrap();
        assert!(dir.move_out("taken.txt", &files.join("taken.txt"), 3).is_err());
        assert_eq!(std::fs::read(files.join("taken.txt")).unwrap(), b"already here");
        // A second link the browser kept to the download writes nothing into the copy.
        std::fs::write(downloads.join("kept.txt"), b"kept").unwrap();
        std::fs::hard_link(downloads.join("kept.txt"), downloads.join("other")).unwrap();
        dir.move_out("kept.txt", &files.join("kept.txt"), 4).unwrap();
        std::fs::write(downloads.join("other"), b"written later by the browser").unwrap();
        assert_eq!(std::fs::read(files.join("kept.txt")).unwrap(), b"kept");
    }
}
