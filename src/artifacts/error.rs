//! Why a file operation was refused, and whose fault that is.

use std::io;

use crate::error::Origin;

/// Why a file operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    BadName(&'static str),
    #[error("no file named {0:?}")]
    NotFound(String),
    #[error("{0:?} is still being downloaded")]
    InProgress(String),
    #[error("the file is larger than the upload limit of {0} bytes")]
    TooLarge(u64),
    #[error("the session's files would pass their quota of {0} bytes")]
    OverQuota(u64),
    #[error("the session has {0} files, the most it may keep: delete some first")]
    TooMany(usize),
    #[error("another upload to this session is under way: files are uploaded one at a time")]
    Busy,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl FileError {
    /// A bad name, a missing or unfinished file, or a quota reached is the request's; a
    /// disk that fails is the broker's.
    pub fn origin(&self) -> Origin {
        match self {
            FileError::Io(_) => Origin::Internal,
            _ => Origin::Client,
        }
    }
}
