//! Packages as content-defined chunks: the library HQ's depot, relay caches and
//! agents share.
//!
//! A package is a [`Manifest`] (name, version, optional install/remove scripts
//! and a list of entries) whose files are cut into chunks with FastCDC and
//! addressed by their blake3 [`ChunkHash`]. Chunks and manifest encodings live
//! as blobs in a [`ChunkStore`]. [`add_path`] turns a file or a directory tree
//! into a manifest plus stored chunks; [`assemble`] turns a manifest plus
//! stored chunks back into a tree under a fresh staging directory.
//!
//! Reading order: `hash` (the address), `paths` (name, path and symlink
//! rules), `manifest` (what a package is and what a valid one looks like),
//! `chunks` (the blob store), `build` (disk to package), `stage` (package to
//! disk).
//!
//! This module is pure and synchronous: it knows nothing of networking, wire
//! messages, sessions or async runtimes. Callers on a runtime use
//! `spawn_blocking`. It never imports other relaytree modules.

mod build;
mod chunks;
mod hash;
mod manifest;
mod paths;
pub mod schedule;
mod stage;

use std::io;
use std::path::PathBuf;

pub use build::{add_path, chunk_file, hash_file, BuildStats, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN};
pub use chunks::{ChunkStore, VerifyReport};
pub use hash::ChunkHash;
pub use manifest::{ChunkRef, Entry, EntryKind, Manifest};
pub use paths::{MAX_NAME_LEN, MAX_PATH_LEN};
pub use stage::{assemble, StageLimits, StageReport};

/// Result of every fallible operation in this module.
pub type Result<T> = std::result::Result<T, PkgError>;

/// Everything that can go wrong building, storing, checking or staging a package.
///
/// Messages are lowercase and name what was wrong: the path, the hash, the limit.
#[derive(Debug, thiserror::Error)]
pub enum PkgError {
    /// An I/O error on `path` (the message says "disk full" when it was ENOSPC).
    #[error("{}", describe_io(.path, .source))]
    Io {
        /// The file or directory the operation was about.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A path given to the library does not exist.
    #[error("not found: {}", .0.display())]
    NotFound(PathBuf),
    /// A path that must not exist already does (e.g. a staging directory).
    #[error("already exists: {}", .0.display())]
    Exists(PathBuf),
    /// A file type packages cannot carry (fifo, socket, device).
    #[error("unsupported file type at {}: {what} (only files, directories and symlinks)", .path.display())]
    Unsupported {
        /// The offending path.
        path: PathBuf,
        /// What it is: "fifo", "socket", "block device", ...
        what: &'static str,
    },
    /// A path inside a package (or a symlink target) that is not acceptable.
    #[error("bad path {path:?}: {why}")]
    BadPath {
        /// The path as written in the package (relative, '/'-separated).
        path: String,
        /// Why it was refused.
        why: String,
    },
    /// Bytes whose blake3 hash is not the one they were announced under.
    #[error("hash mismatch: expected {expected}, got {got}")]
    HashMismatch {
        /// The hash the caller claimed.
        expected: ChunkHash,
        /// The hash of the bytes actually given.
        got: ChunkHash,
    },
    /// A chunk (or manifest blob) the store does not have.
    #[error("missing chunk {0}")]
    MissingChunk(ChunkHash),
    /// A stored blob whose content no longer matches its hash (it was removed).
    #[error("corrupt blob {hash} in the chunk store (removed, fetch it again)")]
    Corrupt {
        /// The hash the blob was stored under.
        hash: ChunkHash,
    },
    /// A package bigger than a byte limit.
    #[error("package too big: needs {need} bytes, limit is {limit}")]
    TooBig {
        /// The limit in bytes.
        limit: u64,
        /// The bytes the package needs.
        need: u64,
    },
    /// A package with more entries than allowed.
    #[error("package has too many entries: {need}, limit is {limit}")]
    TooManyEntries {
        /// The limit in entries.
        limit: usize,
        /// The entries the package has.
        need: usize,
    },
    /// A manifest that decodes but is not valid (name, version, sizes, modes).
    #[error("bad manifest: {0}")]
    BadManifest(String),
    /// Bytes that are not a manifest encoding.
    #[error("cannot decode manifest: {0}")]
    Decode(#[source] rmp_serde::decode::Error),
    /// Text that is not a 64-character hex blake3 hash.
    #[error("bad hash {text:?}: {why}")]
    BadHash {
        /// The text given (cut to 80 characters).
        text: String,
        /// Why it was refused.
        why: &'static str,
    },
}

impl PkgError {
    /// An [`PkgError::Io`] about `path`, or [`PkgError::NotFound`] when the
    /// error says the path does not exist.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> PkgError {
        let path = path.into();
        if source.kind() == io::ErrorKind::NotFound {
            PkgError::NotFound(path)
        } else {
            PkgError::Io { path, source }
        }
    }

    /// True when this is an I/O error caused by a full disk (or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, PkgError::Io { source, .. } if is_disk_full(source))
    }
}

/// True for ENOSPC / EDQUOT.
fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || e.raw_os_error() == Some(nix::errno::Errno::ENOSPC as i32)
        || e.raw_os_error() == Some(nix::errno::Errno::EDQUOT as i32)
}

fn describe_io(path: &std::path::Path, source: &io::Error) -> String {
    if is_disk_full(source) {
        format!("disk full writing {}: {source}", path.display())
    } else {
        format!("i/o error on {}: {source}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_said_plainly() {
        let e = PkgError::io(
            "/var/cache/x",
            io::Error::from_raw_os_error(nix::errno::Errno::ENOSPC as i32),
        );
        assert!(e.is_disk_full());
        assert!(
            e.to_string().starts_with("disk full writing /var/cache/x"),
            "{e}"
        );
    }

    #[test]
    fn not_found_names_the_path() {
        let e = PkgError::io("/nope", io::Error::from(io::ErrorKind::NotFound));
        assert!(matches!(e, PkgError::NotFound(_)));
        assert_eq!(e.to_string(), "not found: /nope");
        let e = PkgError::io("/x", io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!e.is_disk_full());
        assert!(e.to_string().starts_with("i/o error on /x"), "{e}");
    }
}
