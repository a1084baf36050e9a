//! `Manifest`: what a package is, its canonical encoding, its id, and what a
//! valid one looks like.
//!
//! Owns every rule about names, versions, paths, symlink targets, sizes and
//! modes; `build` and `stage` call [`Manifest::validate`] rather than repeat
//! them. It must not touch the disk or the chunk store.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::paths::{bad_path, check_symlink_target, parents, validate_name, validate_path};
use super::{ChunkHash, PkgError, Result};

/// Nesting depth allowed when decoding (a manifest is about 5 levels deep).
const DECODE_MAX_DEPTH: usize = 16;

/// A package: name, version, optional scripts and the tree it installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Package name: printable, no '/', '@' or whitespace, at most 128 bytes.
    pub name: String,
    /// Package version: same rules as the name.
    pub version: String,
    /// Shell script run after the tree is in place, if any.
    pub install: Option<String>,
    /// Shell script run before the tree is removed, if any.
    pub remove: Option<String>,
    /// The tree; [`Manifest::encode`] sorts it by path.
    pub entries: Vec<Entry>,
}

/// One file, directory or symlink of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, '/'-separated, normalized path (no `.`, `..` or empty parts).
    pub path: String,
    /// What is at that path.
    pub kind: EntryKind,
}

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory with permission bits `mode` (at most 0o777).
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file made of `chunks`, in order.
    File {
        /// Permission bits.
        mode: u32,
        /// Length in bytes: the sum of the chunk lengths.
        size: u64,
        /// The file's content, chunk after chunk.
        chunks: Vec<ChunkRef>,
    },
    /// A symbolic link; the target is relative and stays inside the package.
    Symlink {
        /// The link's target as written in the link.
        target: String,
    },
}

/// A chunk of a file: its hash and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 of the chunk's bytes.
    pub hash: ChunkHash,
    /// Length of the chunk in bytes.
    pub len: u32,
}

impl Manifest {
    /// The canonical encoding: named msgpack with entries sorted by path.
    ///
    /// Serializing these plain types into a `Vec` cannot fail; should it ever,
    /// the result is empty, which [`Manifest::decode`] refuses.
    pub fn encode(&self) -> Vec<u8> {
        let mut sorted = self.clone();
        sorted.entries.sort_by(|a, b| a.path.cmp(&b.path));
        match rmp_serde::to_vec_named(&sorted) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, name = %self.name, "manifest encoding failed");
                Vec::new()
            }
        }
    }

    /// Decodes and validates a manifest encoding.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(DECODE_MAX_DEPTH);
        let m = Manifest::deserialize(&mut de).map_err(PkgError::Decode)?;
        m.validate()?;
        Ok(m)
    }

    /// The manifest's id: blake3 of [`Manifest::encode`]. Also its key in a
    /// [`super::ChunkStore`].
    pub fn id(&self) -> ChunkHash {
        ChunkHash::of(&self.encode())
    }

    /// Sum of the sizes of all files, in bytes.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Every distinct chunk, in order of first use (entries taken by path).
    pub fn chunks(&self) -> Vec<ChunkRef> {
        let mut by_path: Vec<&Entry> = self.entries.iter().collect();
        by_path.sort_by(|a, b| a.path.cmp(&b.path));
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in by_path {
            if let EntryKind::File { chunks, .. } = &e.kind {
                for c in chunks {
                    if seen.insert(c.hash) {
                        out.push(*c);
                    }
                }
            }
        }
        out
    }

    /// `name@version`, for logs.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Checks every rule a manifest must follow:
    /// - name and version: non-empty, at most [`super::MAX_NAME_LEN`] bytes, no
    ///   control character, whitespace, '/', '@' or '\\', not `.` or `..`;
    /// - paths: relative, '/'-separated, no empty, `.` or `..` component, no
    ///   NUL, control character or backslash, no duplicates, and every
    ///   ancestor that is an entry is a Dir (not a file or symlink);
    /// - symlink targets: relative, and resolved lexically from the link's
    ///   directory they stay inside the root without passing through another
    ///   symlink of the package;
    /// - files: chunk lengths sum to `size`, no empty chunk;
    /// - modes: permission bits only (no setuid, setgid, sticky).
    pub fn validate(&self) -> Result<()> {
        validate_name("name", &self.name)?;
        validate_name("version", &self.version)?;
        let mut kinds: HashMap<&str, &EntryKind> = HashMap::with_capacity(self.entries.len());
        for e in &self.entries {
            validate_path(&e.path)?;
            if kinds.insert(e.path.as_str(), &e.kind).is_some() {
                return Err(bad_path(&e.path, "duplicate path"));
            }
        }
        for e in &self.entries {
            for parent in parents(&e.path) {
                match kinds.get(parent) {
                    None | Some(EntryKind::Dir { .. }) => {}
                    Some(_) => {
                        return Err(bad_path(
                            &e.path,
                            format!("parent {parent:?} is not a directory"),
                        ))
                    }
                }
            }
            match &e.kind {
                EntryKind::Dir { mode } => check_mode(&e.path, *mode)?,
                EntryKind::File { mode, size, chunks } => {
                    check_mode(&e.path, *mode)?;
                    let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
                    if sum != *size {
                        return Err(PkgError::BadManifest(format!(
                            "{:?}: chunk lengths add up to {sum}, size says {size}",
                            e.path
                        )));
                    }
                    if let Some(c) = chunks.iter().find(|c| c.len == 0) {
                        return Err(PkgError::BadManifest(format!(
                            "{:?}: empty chunk {}",
                            e.path, c.hash
                        )));
                    }
                }
                EntryKind::Symlink { target } => {
                    check_symlink_target(&e.path, target, |p| {
                        matches!(kinds.get(p), Some(EntryKind::Symlink { .. }))
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// Only permission bits: setuid, setgid, sticky and file-type bits are refused.
fn check_mode(path: &str, mode: u32) -> Result<()> {
    if mode & !0o777 != 0 {
        return Err(PkgError::BadManifest(format!(
            "{path:?}: mode {mode:o} has bits beyond 0o777 (setuid, setgid, sticky are refused)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &[u8]) -> Entry {
        let chunks = if data.is_empty() {
            vec![]
        } else {
            vec![ChunkRef {
                hash: ChunkHash::of(data),
                len: data.len() as u32,
            }]
        };
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: data.len() as u64,
                chunks,
            },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode: 0o755 },
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
            name: "tool".into(),
            version: "1.2.3".into(),
            install: Some("echo hi".into()),
            remove: None,
            entries,
        }
    }

    fn sample() -> Manifest {
        manifest(vec![
            file("bin/tool", b"binary"),
            dir("bin"),
            link("bin/t", "tool"),
            file("share/doc/README", b"read me"),
            file("share/copy", b"binary"),
            file("empty", b""),
        ])
    }

    #[test]
    fn encode_decode_round_trip_sorted() {
        let m = sample();
        m.validate().unwrap();
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).unwrap();
        let paths: Vec<_> = back.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/t",
                "bin/tool",
                "empty",
                "share/copy",
                "share/doc/README"
            ]
        );
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.id(), m.id());
    }

    #[test]
    fn id_is_independent_of_entry_order() {
        let m = sample();
        let mut r = m.clone();
        r.entries.reverse();
        assert_eq!(m.encode(), r.encode());
        assert_eq!(m.id(), r.id());
        assert_eq!(m.id(), ChunkHash::of(&m.encode()));
        let mut other = m.clone();
        other.version = "1.2.4".into();
        assert_ne!(other.id(), m.id());
    }

    #[test]
    fn sizes_and_unique_chunks() {
        let m = sample();
        assert_eq!(m.total_size(), 6 + 7 + 6);
        let chunks = m.chunks();
        // "binary" is used twice, counted once; bin/tool comes before share/.
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].hash, ChunkHash::of(b"binary"));
        assert_eq!(chunks[1].hash, ChunkHash::of(b"read me"));
        assert_eq!(m.label(), "tool@1.2.3");
    }

    #[test]
    fn decode_refuses_garbage_and_invalid() {
        assert!(matches!(
            Manifest::decode(b"\x93garbage"),
            Err(PkgError::Decode(_))
        ));
        assert!(matches!(Manifest::decode(&[]), Err(PkgError::Decode(_))));
        let bad = manifest(vec![file("../x", b"x")]);
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(PkgError::BadPath { .. })
        ));
    }

    #[test]
    fn validate_refusals() {
        let mut suid = file("bin/su", b"x");
        if let EntryKind::File { mode, .. } = &mut suid.kind {
            *mode = 0o4755;
        }
        let bad_sum = Entry {
            path: "f".into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: 10,
                chunks: vec![ChunkRef {
                    hash: ChunkHash::of(b"x"),
                    len: 1,
                }],
            },
        };
        let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
            ("dotdot", vec![file("../x", b"x")], "'..' component"),
            ("absolute", vec![file("/etc/passwd", b"x")], "absolute path"),
            ("inner dotdot", vec![file("a/../../b", b"x")], "'..'"),
            ("double slash", vec![file("a//b", b"x")], "empty component"),
            ("trailing slash", vec![file("a/", b"x")], "empty component"),
            ("dot", vec![file(".", b"x")], "'.' component"),
            ("inner dot", vec![file("a/./b", b"x")], "'.' component"),
            ("empty", vec![file("", b"x")], "empty path"),
            ("nul", vec![file("a\0b", b"x")], "nul"),
            ("backslash", vec![file("a\\..\\b", b"x")], "backslash"),
            ("newline", vec![file("a\nb", b"x")], "control"),
            (
                "duplicate",
                vec![file("a", b"x"), file("a", b"y")],
                "duplicate",
            ),
            (
                "dir and file same path",
                vec![dir("a"), file("a", b"y")],
                "duplicate",
            ),
            (
                "file under file",
                vec![file("a", b"x"), file("a/b", b"y")],
                "not a directory",
            ),
            (
                "file under symlink",
                vec![link("a", "b"), dir("b"), file("a/c", b"y")],
                "not a directory",
            ),
            (
                "deep under file",
                vec![file("a", b"x"), file("a/b/c", b"y")],
                "not a directory",
            ),
            (
                "symlink up and out",
                vec![link("a/l", "../../etc")],
                "escapes",
            ),
            ("symlink out at root", vec![link("l", "..")], "escapes"),
            (
                "absolute symlink",
                vec![link("l", "/etc/passwd")],
                "absolute",
            ),
            ("empty symlink", vec![link("l", "")], "empty"),
            (
                "symlink through symlink",
                vec![link("up", "."), link("out", "up/../x")],
                "another symlink",
            ),
            ("setuid", vec![suid], "setuid"),
            ("sizes", vec![bad_sum], "add up"),
        ];
        for (label, entries, want) in cases {
            let err = manifest(entries).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{label}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn validate_accepts_inner_symlinks() {
        manifest(vec![
            link("a/b/l", "../c/x"),
            link("a/l", "../top"),
            link("self", "."),
            link("chain", "a/l"),
            file("top", b"t"),
        ])
        .validate()
        .unwrap();
    }
}
