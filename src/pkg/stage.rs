//! `assemble`: writes a package's tree from stored chunks into a fresh staging
//! directory, ready to be moved into place by the caller.
//!
//! Owns the limits checked before writing, refusing to follow symlinks while
//! creating (so nothing is ever written outside the staging directory), and
//! cleaning up a partial tree on error. It must not decide where packages are
//! installed, run install scripts, or fetch missing chunks.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use super::paths::{parents, validate_path};
use super::{ChunkStore, Entry, EntryKind, Manifest, PkgError, Result};

/// Mode of directories that exist only as parents of entries.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// Bounds [`assemble`] checks before writing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLimits {
    /// Most bytes of file content a package may have.
    pub max_bytes: u64,
    /// Most entries a package may have.
    pub max_entries: usize,
}

impl Default for StageLimits {
    /// 4 GiB and 100 000 entries.
    fn default() -> StageLimits {
        StageLimits {
            max_bytes: 4 << 30,
            max_entries: 100_000,
        }
    }
}

/// What [`assemble`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageReport {
    /// Directories created, explicit or implicit (not counting the root).
    pub dirs: u64,
    /// Regular files written.
    pub files: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Writes `manifest`'s tree under `staging`, which must not exist yet (its
/// parent must). Every chunk is read through [`ChunkStore::get`], so it is
/// verified; a missing one is [`PkgError::MissingChunk`].
///
/// The manifest is validated again and checked against `limits` before
/// anything is written. Symlinks are never followed while creating, so no
/// entry can land outside `staging`. On any error the partial `staging`
/// directory is removed. Files are not fsynced: a caller that needs the tree
/// durable syncs it before moving it into place.
pub fn assemble(
    manifest: &Manifest,
    store: &ChunkStore,
    staging: &Path,
    limits: &StageLimits,
) -> Result<StageReport> {
    manifest.validate()?;
    if manifest.entries.len() > limits.max_entries {
        return Err(PkgError::TooManyEntries {
            limit: limits.max_entries,
            need: manifest.entries.len(),
        });
    }
    let need = manifest.total_size();
    if need > limits.max_bytes {
        return Err(PkgError::TooBig {
            limit: limits.max_bytes,
            need,
        });
    }
    create_staging(staging)?;
    match write_tree(&manifest.entries, store, staging) {
        Ok(report) => Ok(report),
        Err(e) => {
            remove_partial(staging);
            Err(e)
        }
    }
}

fn create_staging(staging: &Path) -> Result<()> {
    match fs::symlink_metadata(staging) {
        Ok(_) => return Err(PkgError::Exists(staging.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(PkgError::io(staging, e)),
    }
    let parent = match staging.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(PkgError::NotFound(parent.to_path_buf()));
    }
    fs::create_dir(staging).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => PkgError::Exists(staging.to_path_buf()),
        _ => PkgError::io(staging, e),
    })
}

/// Creates every entry under `root` (which exists), parents first. Trusts no
/// path: each is checked again, and no parent may be anything but a real
/// directory.
fn write_tree(entries: &[Entry], store: &ChunkStore, root: &Path) -> Result<StageReport> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut report = StageReport::default();
    let mut known_dirs: HashSet<&str> = HashSet::new();
    // Modes are applied last, deepest first, so a read-only directory can
    // still be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for e in sorted {
        validate_path(&e.path)?;
        for p in parents(&e.path) {
            if known_dirs.contains(p) {
                continue;
            }
            let full = root.join(p);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(PkgError::BadPath {
                        path: e.path.clone(),
                        why: format!("parent {p:?} is not a directory (not following it)"),
                    })
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    make_dir(&full)?;
                    dir_modes.push((full, IMPLICIT_DIR_MODE));
                    report.dirs += 1;
                }
                Err(err) => return Err(PkgError::io(full, err)),
            }
            known_dirs.insert(p);
        }
        let full = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir { mode } => {
                make_dir(&full)?;
                dir_modes.push((full, *mode));
                report.dirs += 1;
                known_dirs.insert(&e.path);
            }
            EntryKind::File { mode, chunks, .. } => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(OFlag::O_NOFOLLOW.bits())
                    .open(&full)
                    .map_err(|err| PkgError::io(&full, err))?;
                for c in chunks {
                    let data = store.get(&c.hash)?;
                    if data.len() != c.len as usize {
                        return Err(PkgError::BadManifest(format!(
                            "{:?}: chunk {} is {} bytes, manifest says {}",
                            e.path,
                            c.hash,
                            data.len(),
                            c.len
                        )));
                    }
                    f.write_all(&data).map_err(|err| PkgError::io(&full, err))?;
                    report.bytes += data.len() as u64;
                }
                f.set_permissions(fs::Permissions::from_mode(*mode))
                    .map_err(|err| PkgError::io(&full, err))?;
                report.files += 1;
            }
            EntryKind::Symlink { target } => {
                symlink(target, &full).map_err(|err| PkgError::io(&full, err))?;
                report.symlinks += 1;
            }
        }
    }
    dir_modes.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode) in dir_modes {
        set_dir_mode(&dir, mode)?;
    }
    Ok(report)
}

/// `mkdir`, which never follows a symlink at the last component.
fn make_dir(full: &Path) -> Result<()> {
    fs::create_dir(full).map_err(|e| PkgError::io(full, e))
}

/// Sets a directory's mode through a handle opened without following links.
fn set_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    let d = OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY).bits())
        .open(dir)
        .map_err(|e| PkgError::io(dir, e))?;
    d.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| PkgError::io(dir, e))
}

/// Best-effort removal of a partial staging tree, read-only dirs included.
fn remove_partial(staging: &Path) {
    make_writable(staging);
    if let Err(e) = fs::remove_dir_all(staging) {
        tracing::warn!(path = %staging.display(), error = %e, "could not remove partial staging dir");
    }
}

fn make_writable(dir: &Path) {
    let _ = set_dir_mode(dir, 0o700);
    let Ok(children) = fs::read_dir(dir) else {
        return;
    };
    for child in children.flatten() {
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&child.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::{ChunkHash, ChunkRef};

    struct Fixture {
        tmp: tempfile::TempDir,
        store: ChunkStore,
    }

    impl Fixture {
        fn new() -> Fixture {
            let tmp = tempfile::tempdir().unwrap();
            let store = ChunkStore::open(tmp.path().join("store")).unwrap();
            Fixture { tmp, store }
        }

        fn staging(&self) -> PathBuf {
            self.tmp.path().join("staging")
        }

        /// A file entry whose chunks are put in the store (unless `store` is false).
        fn file(&self, path: &str, parts: &[&[u8]], mode: u32, store: bool) -> Entry {
            let mut chunks = Vec::new();
            for p in parts {
                let hash = ChunkHash::of(p);
                if store {
                    self.store.put(&hash, p).unwrap();
                }
                chunks.push(ChunkRef {
                    hash,
                    len: p.len() as u32,
                });
            }
            Entry {
                path: path.into(),
                kind: EntryKind::File {
                    mode,
                    size: parts.iter().map(|p| p.len() as u64).sum(),
                    chunks,
                },
            }
        }
    }

    fn dir(path: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode },
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            name: "p".into(),
            version: "1".into(),
            install: None,
            remove: None,
            entries,
        }
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_files_dirs_links_and_modes() {
        let fx = Fixture::new();
        let m = manifest(vec![
            fx.file("ro/inside", &[b"hello ", b"world"], 0o640, true),
            dir("ro", 0o555),
            fx.file("a/b/c/deep", &[b"deep"], 0o700, true),
            link("a/up", "../ro/inside"),
            fx.file("same", &[b"hello "], 0o644, true),
        ]);
        let st = fx.staging();
        let r = assemble(&m, &fx.store, &st, &StageLimits::default()).unwrap();
        assert_eq!(r.files, 3);
        assert_eq!(r.symlinks, 1);
        assert_eq!(r.dirs, 4, "ro, a, a/b, a/b/c");
        assert_eq!(r.bytes, 11 + 4 + 6);
        assert_eq!(fs::read(st.join("ro/inside")).unwrap(), b"hello world");
        assert_eq!(fs::read(st.join("a/up")).unwrap(), b"hello world");
        assert_eq!(mode_of(&st.join("ro")), 0o555);
        assert_eq!(mode_of(&st.join("ro/inside")), 0o640);
        assert_eq!(mode_of(&st.join("a/b/c/deep")), 0o700);
        assert_eq!(mode_of(&st.join("a/b")), IMPLICIT_DIR_MODE);
        make_writable(&st); // so the temp dir can be cleaned up
    }

    #[test]
    fn crafted_escape_is_refused_and_nothing_written() {
        let fx = Fixture::new();
        for bad in ["../evil", "/tmp/evil", "a/../../evil"] {
            let m = manifest(vec![fx.file(bad, &[b"x"], 0o644, true)]);
            let e = assemble(&m, &fx.store, &fx.staging(), &StageLimits::default()).unwrap_err();
            assert!(matches!(e, PkgError::BadPath { .. }), "{bad}: {e}");
            assert!(!fx.staging().exists());
        }
        assert!(!fx.tmp.path().join("evil").exists());
        // A file under a symlink is refused by validation...
        let m = manifest(vec![
            link("a", "b"),
            dir("b", 0o755),
            fx.file("a/x", &[b"x"], 0o644, true),
        ]);
        let e = assemble(&m, &fx.store, &fx.staging(), &StageLimits::default()).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!fx.staging().exists());
    }

    #[test]
    fn writer_does_not_follow_symlinks_even_unvalidated() {
        // Bypass validation: a symlink "a" to a directory outside, then "a/b".
        let fx = Fixture::new();
        let outside = fx.tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let root = fx.staging();
        fs::create_dir(&root).unwrap();
        let entries = vec![
            link("a", outside.to_str().unwrap()),
            fx.file("a/b", &[b"pwned"], 0o644, true),
        ];
        let e = write_tree(&entries, &fx.store, &root).unwrap_err();
        assert!(e.to_string().contains("not following"), "{e}");
        assert!(!outside.join("b").exists());

        // The final component: a symlink already at a file's own path.
        let root2 = fx.tmp.path().join("staging2");
        fs::create_dir(&root2).unwrap();
        symlink(outside.join("victim"), root2.join("f")).unwrap();
        let entries = vec![fx.file("f", &[b"pwned"], 0o644, true)];
        assert!(write_tree(&entries, &fx.store, &root2).is_err());
        assert!(!outside.join("victim").exists());
    }

    #[test]
    fn missing_chunk_removes_partial_staging() {
        let fx = Fixture::new();
        let m = manifest(vec![
            fx.file("a/first", &[b"present"], 0o644, true),
            dir("a", 0o555),
            fx.file("z/last", &[b"present", b"absent"], 0o644, false),
        ]);
        let e = assemble(&m, &fx.store, &fx.staging(), &StageLimits::default()).unwrap_err();
        assert!(
            matches!(e, PkgError::MissingChunk(h) if h == ChunkHash::of(b"absent")),
            "{e}"
        );
        assert!(!fx.staging().exists(), "partial staging removed");
    }

    #[test]
    fn corrupt_chunk_is_refused() {
        let fx = Fixture::new();
        let m = manifest(vec![fx.file("f", &[b"good bytes"], 0o644, true)]);
        let h = ChunkHash::of(b"good bytes");
        fs::write(fx.store.path_of(&h), b"bad bytes!").unwrap();
        let e = assemble(&m, &fx.store, &fx.staging(), &StageLimits::default()).unwrap_err();
        assert!(matches!(e, PkgError::Corrupt { hash } if hash == h), "{e}");
        assert!(!fx.staging().exists());
        assert!(!fx.store.has(&h));
    }

    #[test]
    fn limits_are_checked_before_writing() {
        let fx = Fixture::new();
        let m = manifest(vec![
            fx.file("a", &[&[1u8; 100]], 0o644, true),
            fx.file("b", &[&[2u8; 100]], 0o644, true),
        ]);
        let small = StageLimits {
            max_bytes: 150,
            ..StageLimits::default()
        };
        let e = assemble(&m, &fx.store, &fx.staging(), &small).unwrap_err();
        assert!(
            matches!(
                e,
                PkgError::TooBig {
                    limit: 150,
                    need: 200
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("150") && e.to_string().contains("200"));
        assert!(!fx.staging().exists(), "nothing written");
        let few = StageLimits {
            max_entries: 1,
            ..StageLimits::default()
        };
        let e = assemble(&m, &fx.store, &fx.staging(), &few).unwrap_err();
        assert!(
            matches!(e, PkgError::TooManyEntries { limit: 1, need: 2 }),
            "{e}"
        );
        assert!(!fx.staging().exists());
    }

    #[test]
    fn staging_must_be_fresh_with_a_parent() {
        let fx = Fixture::new();
        let m = manifest(vec![fx.file("f", &[b"x"], 0o644, true)]);
        let st = fx.staging();
        fs::create_dir(&st).unwrap();
        fs::write(st.join("keep"), b"mine").unwrap();
        let e = assemble(&m, &fx.store, &st, &StageLimits::default()).unwrap_err();
        assert!(matches!(&e, PkgError::Exists(p) if p == &st), "{e}");
        assert_eq!(fs::read(st.join("keep")).unwrap(), b"mine", "left alone");

        let orphan = fx.tmp.path().join("no/such/parent/staging");
        let e = assemble(&m, &fx.store, &orphan, &StageLimits::default()).unwrap_err();
        assert!(matches!(e, PkgError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("no/such/parent"), "{e}");
    }

    #[test]
    fn default_limits() {
        let l = StageLimits::default();
        assert_eq!(l.max_bytes, 4 * 1024 * 1024 * 1024);
        assert_eq!(l.max_entries, 100_000);
    }
}
