//! `add_path`: turns a file or a directory tree on disk into a [`Manifest`],
//! cutting files into FastCDC chunks and putting them in a [`ChunkStore`].
//!
//! Owns the chunking parameters and the mapping from disk (file types, modes,
//! names) to entries. Walks are sorted, so the same tree gives the same
//! manifest. It must not write anywhere but the store, and leaves every rule
//! about what a valid package is to [`Manifest::validate`].

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Component, Path};

use fastcdc::v2020::StreamCDC;

use super::paths::{check_symlink_target, validate_name};
use super::{ChunkHash, ChunkRef, ChunkStore, Entry, EntryKind, Manifest, PkgError, Result};

/// Smallest chunk FastCDC cuts (except a file's last one), in bytes.
pub const CHUNK_MIN: u32 = 16 * 1024;
/// Average chunk size FastCDC aims for, in bytes.
pub const CHUNK_AVG: u32 = 64 * 1024;
/// Largest chunk FastCDC cuts, in bytes.
pub const CHUNK_MAX: u32 = 256 * 1024;

/// What [`add_path`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Regular files in the package.
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// Chunks cut, counting repeats.
    pub chunks: u64,
    /// Chunks the store did not have before.
    pub new_chunks: u64,
    /// Bytes in those new chunks.
    pub new_bytes: u64,
}

/// Builds package `name@version` from `path` (a file, or a directory whose
/// contents become the package root), storing its chunks in `store`.
///
/// A single file gives one File entry named after the file. A symlink given
/// as `path` is followed; symlinks inside a tree are kept as Symlink entries
/// and must point inside the tree. Fifos, sockets and devices are refused.
/// The manifest itself is not stored: see [`ChunkStore::put_manifest`].
pub fn add_path(
    path: &Path,
    name: &str,
    version: &str,
    install: Option<String>,
    remove: Option<String>,
    store: &ChunkStore,
) -> Result<(Manifest, BuildStats)> {
    validate_name("name", name)?;
    validate_name("version", version)?;
    let meta = fs::metadata(path).map_err(|e| PkgError::io(path, e))?;
    let mut stats = BuildStats::default();
    let mut entries = Vec::new();
    if meta.is_file() {
        let file_name = path
            .file_name()
            .ok_or_else(|| PkgError::NotFound(path.to_path_buf()))?;
        let rel = file_name.to_str().ok_or_else(|| PkgError::BadPath {
            path: path.display().to_string(),
            why: "file name is not utf-8".into(),
        })?;
        entries.push(file_entry(path, rel.to_string(), &meta, store, &mut stats)?);
    } else if meta.is_dir() {
        walk_dir(path, store, &mut entries, &mut stats)?;
    } else {
        return Err(unsupported(path, meta.file_type()));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest = Manifest {
        name: name.to_string(),
        version: version.to_string(),
        install,
        remove,
        entries,
    };
    manifest.validate()?;
    Ok((manifest, stats))
}

fn walk_dir(
    root: &Path,
    store: &ChunkStore,
    entries: &mut Vec<Entry>,
    stats: &mut BuildStats,
) -> Result<()> {
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for item in walker {
        let item = item.map_err(|e| {
            let p = e.path().unwrap_or(root).to_path_buf();
            match e.into_io_error() {
                Some(io) => PkgError::io(p, io),
                None => PkgError::BadPath {
                    path: p.display().to_string(),
                    why: "filesystem loop".into(),
                },
            }
        })?;
        let full = item.path();
        let rel = relative_path(root, full)?;
        let ft = item.file_type();
        let meta = fs::symlink_metadata(full).map_err(|e| PkgError::io(full, e))?;
        let kind = if ft.is_dir() {
            EntryKind::Dir {
                mode: meta.permissions().mode() & 0o777,
            }
        } else if ft.is_file() {
            entries.push(file_entry(full, rel, &meta, store, stats)?);
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(full).map_err(|e| PkgError::io(full, e))?;
            let target = target.to_str().ok_or_else(|| PkgError::BadPath {
                path: rel.clone(),
                why: "symlink target is not utf-8".into(),
            })?;
            // Early, so the error names the link before more work is done;
            // `validate` repeats it with knowledge of the other symlinks.
            check_symlink_target(&rel, target, |_| false)?;
            EntryKind::Symlink {
                target: target.to_string(),
            }
        } else {
            return Err(unsupported(full, ft));
        };
        entries.push(Entry { path: rel, kind });
    }
    Ok(())
}

/// `full` relative to `root`, '/'-separated; names must be utf-8.
fn relative_path(root: &Path, full: &Path) -> Result<String> {
    let bad = |why: &str| PkgError::BadPath {
        path: full.display().to_string(),
        why: why.into(),
    };
    let rel = full
        .strip_prefix(root)
        .map_err(|_| bad("outside the tree being added"))?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| bad("name is not utf-8"))?),
            _ => return Err(bad("not a plain relative path")),
        }
    }
    Ok(parts.join("/"))
}

/// Chunks the file at `full` into the store and returns its entry.
fn file_entry(
    full: &Path,
    rel: String,
    meta: &fs::Metadata,
    store: &ChunkStore,
    stats: &mut BuildStats,
) -> Result<Entry> {
    let file = File::open(full).map_err(|e| PkgError::io(full, e))?;
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let cdc = StreamCDC::new(
        file,
        CHUNK_MIN as usize,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize,
    );
    for piece in cdc {
        let piece = piece.map_err(|e| PkgError::io(full, e.into()))?;
        let hash = ChunkHash::of(&piece.data);
        let len = piece.data.len() as u32; // <= CHUNK_MAX
        if store.put(&hash, &piece.data)? {
            stats.new_chunks += 1;
            stats.new_bytes += u64::from(len);
        }
        stats.chunks += 1;
        size += u64::from(len);
        chunks.push(ChunkRef { hash, len });
    }
    stats.files += 1;
    stats.bytes += size;
    Ok(Entry {
        path: rel,
        kind: EntryKind::File {
            mode: meta.permissions().mode() & 0o777,
            size,
            chunks,
        },
    })
}

/// Cuts one file into chunks stored in `store` (as a package's files are):
/// returns its length, its chunks in order and the blake3 of its whole
/// content (what an audit compares). Used by snapshots.
pub fn chunk_file(path: &Path, store: &ChunkStore) -> Result<(u64, Vec<ChunkRef>, ChunkHash)> {
    let file = File::open(path).map_err(|e| PkgError::io(path, e))?;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let cdc = StreamCDC::new(
        file,
        CHUNK_MIN as usize,
        CHUNK_AVG as usize,
        CHUNK_MAX as usize,
    );
    for piece in cdc {
        let piece = piece.map_err(|e| PkgError::io(path, e.into()))?;
        whole.update(&piece.data);
        let hash = ChunkHash::of(&piece.data);
        let len = piece.data.len() as u32; // <= CHUNK_MAX
        store.put(&hash, &piece.data)?;
        size += u64::from(len);
        chunks.push(ChunkRef { hash, len });
    }
    Ok((
        size,
        chunks,
        ChunkHash::from_bytes(*whole.finalize().as_bytes()),
    ))
}

/// The blake3 of a file's whole content, read in pieces (what an audit
/// compares; the same as [`chunk_file`]'s).
pub fn hash_file(path: &Path) -> Result<ChunkHash> {
    let mut f = File::open(path).map_err(|e| PkgError::io(path, e))?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut f, &mut h).map_err(|e| PkgError::io(path, e))?;
    Ok(ChunkHash::from_bytes(*h.finalize().as_bytes()))
}

fn unsupported(path: &Path, ft: fs::FileType) -> PkgError {
    let what = if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "unknown file type"
    };
    PkgError::Unsupported {
        path: path.to_path_buf(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::{assemble, StageLimits};
    use rand::RngCore;
    use std::os::unix::fs::symlink;

    fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = vec![0u8; n];
        rng.fill_bytes(&mut v);
        v
    }

    fn set_mode(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A tree with nested dirs, a big file, a script, an empty file, a symlink.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("share/doc/deep")).unwrap();
        fs::create_dir_all(root.join("empty-dir")).unwrap();
        fs::write(root.join("bin/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        set_mode(&root.join("bin/run.sh"), 0o755);
        fs::write(root.join("share/data.bin"), random_bytes(600_000, 1)).unwrap();
        fs::write(root.join("share/doc/deep/README"), b"read me").unwrap();
        set_mode(&root.join("share/doc/deep/README"), 0o600);
        fs::write(root.join("empty"), b"").unwrap();
        set_mode(&root.join("share/doc"), 0o750);
        symlink("../bin/run.sh", root.join("share/run")).unwrap();
    }

    #[test]
    fn tree_round_trips_through_assemble() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let store = ChunkStore::open(tmp.path().join("store")).unwrap();
        let (m, stats) = add_path(&src, "demo", "1.0", Some("true".into()), None, &store).unwrap();
        assert_eq!(stats.files, 4);
        assert_eq!(stats.bytes, 600_000 + 18 + 7);
        assert_eq!(stats.bytes, m.total_size());
        assert!(stats.chunks >= 5, "600 KB cuts into several chunks");
        assert_eq!(stats.new_chunks, stats.chunks);
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/run.sh",
                "empty",
                "empty-dir",
                "share",
                "share/data.bin",
                "share/doc",
                "share/doc/deep",
                "share/doc/deep/README",
                "share/run",
            ]
        );
        let id = store.put_manifest(&m).unwrap();
        let m = store.get_manifest(&id).unwrap();

        let out = tmp.path().join("out");
        let report = assemble(&m, &store, &out, &StageLimits::default()).unwrap();
        assert_eq!(report.files, 4);
        assert_eq!(report.symlinks, 1);
        assert_eq!(report.bytes, m.total_size());
        for rel in [
            "bin/run.sh",
            "share/data.bin",
            "share/doc/deep/README",
            "empty",
        ] {
            assert_eq!(
                fs::read(src.join(rel)).unwrap(),
                fs::read(out.join(rel)).unwrap(),
                "{rel}"
            );
        }
        for (rel, mode) in [
            ("bin/run.sh", 0o755),
            ("share/doc/deep/README", 0o600),
            ("share/doc", 0o750),
        ] {
            let got = fs::symlink_metadata(out.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(got, mode, "{rel}");
        }
        assert!(out.join("empty-dir").is_dir());
        assert_eq!(
            fs::read_link(out.join("share/run")).unwrap(),
            Path::new("../bin/run.sh")
        );
        assert_eq!(
            fs::read(out.join("share/run")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn same_tree_twice_is_deterministic_and_stores_nothing_new() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        make_tree(&src);
        let store = ChunkStore::open(tmp.path().join("store")).unwrap();
        let (a, _) = add_path(&src, "demo", "1.0", None, None, &store).unwrap();
        let before = store.len().unwrap();
        let (b, stats) = add_path(&src, "demo", "1.0", None, None, &store).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(stats.new_chunks, 0);
        assert_eq!(stats.new_bytes, 0);
        assert_eq!(store.len().unwrap(), before);
    }

    #[test]
    fn one_percent_change_stores_few_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let mut data = random_bytes(size, 7);
        let f = tmp.path().join("big.bin");
        fs::write(&f, &data).unwrap();
        let store = ChunkStore::open(tmp.path().join("store")).unwrap();
        let (m1, s1) = add_path(&f, "big", "1", None, None, &store).unwrap();
        assert_eq!(m1.entries.len(), 1);
        assert_eq!(m1.entries[0].path, "big.bin");
        assert_eq!(s1.bytes, size as u64);
        let n = s1.chunks;
        assert!((16..=256).contains(&n), "{n} chunks for 4 MiB");

        // Overwrite 1% in the middle.
        let mid = size / 2;
        let patch = random_bytes(size / 100, 8);
        data[mid..mid + patch.len()].copy_from_slice(&patch);
        fs::write(&f, &data).unwrap();
        let (m2, s2) = add_path(&f, "big", "2", None, None, &store).unwrap();
        assert_ne!(m1.id(), m2.id());
        eprintln!(
            "4 MiB file: {n} chunks; 1% changed: {} new chunks, {} new bytes",
            s2.new_chunks, s2.new_bytes
        );
        assert!(
            s2.new_bytes < size as u64 / 10,
            "new bytes {} of {size}",
            s2.new_bytes
        );
        assert!(s2.new_chunks <= 6, "{} new chunks", s2.new_chunks);
    }

    #[test]
    fn refusals_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(tmp.path().join("store")).unwrap();

        let missing = tmp.path().join("nope");
        let e = add_path(&missing, "p", "1", None, None, &store).unwrap_err();
        assert!(matches!(&e, PkgError::NotFound(p) if p == &missing), "{e}");
        assert!(e.to_string().contains("nope"));

        let src = tmp.path().join("escape");
        fs::create_dir_all(src.join("sub")).unwrap();
        symlink("../../etc/passwd", src.join("sub/evil")).unwrap();
        let e = add_path(&src, "p", "1", None, None, &store).unwrap_err();
        assert!(e.to_string().contains("sub/evil"), "{e}");
        assert!(e.to_string().contains("escapes"), "{e}");

        let abs = tmp.path().join("abs");
        fs::create_dir_all(&abs).unwrap();
        symlink("/etc/passwd", abs.join("passwd")).unwrap();
        let e = add_path(&abs, "p", "1", None, None, &store).unwrap_err();
        assert!(e.to_string().contains("passwd"), "{e}");

        let fifo_dir = tmp.path().join("fifo");
        fs::create_dir_all(&fifo_dir).unwrap();
        let fifo = fifo_dir.join("pipe");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = add_path(&fifo_dir, "p", "1", None, None, &store).unwrap_err();
        assert!(
            matches!(&e, PkgError::Unsupported { path, what: "fifo" } if path == &fifo),
            "{e}"
        );
        assert!(e.to_string().contains("pipe"), "{e}");

        let sock_dir = tmp.path().join("sock");
        fs::create_dir_all(&sock_dir).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(sock_dir.join("s")).unwrap();
        let e = add_path(&sock_dir, "p", "1", None, None, &store).unwrap_err();
        assert!(
            matches!(e, PkgError::Unsupported { what: "socket", .. }),
            "{e}"
        );

        let ok = tmp.path().join("ok");
        fs::write(&ok, b"x").unwrap();
        let e = add_path(&ok, "bad/name", "1", None, None, &store).unwrap_err();
        assert!(matches!(e, PkgError::BadManifest(_)), "{e}");
    }

    #[test]
    fn single_file_and_empty_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(tmp.path().join("store")).unwrap();
        let f = tmp.path().join("tool");
        fs::write(&f, b"").unwrap();
        set_mode(&f, 0o4755); // setuid is dropped on build
        let (m, stats) = add_path(&f, "tool", "1", None, None, &store).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(stats.chunks, 0);
        match &m.entries[0].kind {
            EntryKind::File { mode, size, chunks } => {
                assert_eq!(*mode, 0o755);
                assert_eq!(*size, 0);
                assert!(chunks.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}
