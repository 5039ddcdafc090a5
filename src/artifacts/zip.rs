//! A session's files as one zip archive, streamed as it is written: entries stored (the
//! files are downloads, mostly compressed already), each file read twice (its CRC-32
//! first, as the local header needs it). No ZIP64: a session's files stay under 4 GiB
//! (`max_session_files_bytes`).

use std::io;
use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

const CHUNK: usize = 64 * 1024;
/// UTF-8 names (general purpose flag bit 11).
const UTF8: u16 = 1 << 11;

/// One file of the archive: its name in the archive, where it is, and its time (Unix s).
pub(crate) struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub modified: u64,
}

/// The archive of `entries`, as a stream of chunks. A file that cannot be read ends the
/// stream with an error (the client sees a cut-off download, not a wrong archive).
pub(crate) fn archive(entries: Vec<Entry>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(e) = write(entries, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

struct Written {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
    time: (u16, u16),
}

async fn write(entries: Vec<Entry>, tx: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the client went away");
    let mut offset: u64 = 0;
    let mut written = Vec::with_capacity(entries.len());
    for entry in entries {
        let (crc, size) = checksum(&entry.path).await?;
        let size = u32::try_from(size).map_err(|_| io::Error::other("a file is too large for a zip archive"))?;
        let offset32 = u32::try_from(offset).map_err(|_| io::Error::other("the archive is too large"))?;
        let time = dos_time(entry.modified);
        let mut head = BytesMut::with_capacity(30 + entry.name.len());
        head.put_u32_le(0x0403_4b50);
        head.put_u16_le(10); // version needed: stored
        head.put_u16_le(UTF8);
        head.put_u16_le(0); // stored
        head.put_u16_le(time.1);
        head.put_u16_le(time.0);
        head.put_u32_le(crc);
        head.put_u32_le(size);
        head.put_u32_le(size);
        head.put_u16_le(entry.name.len() as u16);
        head.put_u16_le(0);
        head.put_slice(entry.name.as_bytes());
        offset += head.len() as u64 + u64::from(size);
        tx.send(Ok(head.freeze())).await.map_err(|_| gone())?;
        let mut file = tokio::fs::File::open(&entry.path).await?;
        let mut left = u64::from(size);
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            file.read_exact(&mut buf).await?;
            left -= buf.len() as u64;
            tx.send(Ok(Bytes::from(buf))).await.map_err(|_| gone())?;
        }
        written.push(Written {
            name: entry.name,
            crc,
            size,
            offset: offset32,
            time,
        });
    }
    let directory_start = u32::try_from(offset).map_err(|_| io::Error::other("the archive is too large"))?;
    let mut directory = BytesMut::new();
    for w in &written {
        directory.put_u32_le(0x0201_4b50);
        directory.put_u16_le(0x0314); // made by: Unix, 2.0
        directory.put_u16_le(10);
        directory.put_u16_le(UTF8);
        directory.put_u16_le(0);
        directory.put_u16_le(w.time.1);
        directory.put_u16_le(w.time.0);
        directory.put_u32_le(w.crc);
        directory.put_u32_le(w.size);
        directory.put_u32_le(w.size);
        directory.put_u16_le(w.name.len() as u16);
        directory.put_u16_le(0); // extra
        directory.put_u16_le(0); // comment
        directory.put_u16_le(0); // disk
        directory.put_u16_le(0); // internal attributes
        directory.put_u32_le(0o100644 << 16); // a regular file, rw-r--r--
        directory.put_u32_le(w.offset);
        directory.put_slice(w.name.as_bytes());
    }
    let directory_len = directory.len() as u32;
    directory.put_u32_le(0x0605_4b50);
    directory.put_u16_le(0);
    directory.put_u16_le(0);
    directory.put_u16_le(written.len() as u16);
    directory.put_u16_le(written.len() as u16);
    directory.put_u32_le(directory_len);
    directory.put_u32_le(directory_start);
    directory.put_u16_le(0);
    tx.send(Ok(directory.freeze())).await.map_err(|_| gone())
}

async fn checksum(path: &std::path::Path) -> io::Result<(u32, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok((hasher.finalize(), size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

/// MS-DOS (date, time) of a Unix time, in UTC; 1980-01-01 for anything earlier.
fn dos_time(unix: u64) -> (u16, u16) {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year < 1980 {
        return ((1 << 5) | 1, 0);
    }
    let date = (((year - 1980) as u16) << 9) | ((month as u16) << 5) | day as u16;
    let time = (((secs / 3600) as u16) << 11) | ((((secs % 3600) / 60) as u16) << 5) | ((secs % 60) / 2) as u16;
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn dos_times_are_civil_dates() {
        // 2026-11-30 12:34:56 UTC
        let (date, time) = dos_time(1_796_042_096);
        assert_eq!((date >> 9) + 1980, 2026);
        assert_eq!(((date >> 5) & 0xf, date & 0x1f), (11, 30));
        assert_eq!((time >> 11, (time >> 5) & 0x3f, (time & 0x1f) * 2), (12, 34, 56));
        assert_eq!(dos_time(0), (33, 0));
    }

    #[tokio::test]
    async fn the_archive_is_read_back_by_unzip() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.bin");
        std::fs::write(&a, b"hello").unwrap();
        std::fs::write(&b, vec![7u8; 200_000]).unwrap();
        let entries = vec![
            Entry {
                name: "a.txt".into(),
                path: a,
                modified: 1_796_042_096,
            },
            Entry {
                name: "Résumé.bin".into(),
                path: b,
                modified: 1_796_042_096,
            },
        ];
        let mut out = Vec::new();
        let mut stream = Box::pin(archive(entries));
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        let zip = dir.path().join("all.zip");
        std::fs::write(&zip, &out).unwrap();
        // Python's zipfile checks every CRC and the directory.
        let check = std::process::Command::new("python3")
            .args(["-c", "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(','.join(f'{i.filename}:{i.file_size}' for i in z.infolist()))"])
            .arg(&zip)
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        assert_eq!(
            String::from_utf8_lossy(&check.stdout).trim(),
            "a.txt:5,Résumé.bin:200000"
        );
    }
}
