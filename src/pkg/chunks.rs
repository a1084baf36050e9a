//! `ChunkStore`: a directory of content-addressed blobs, `<dir>/ab/abcdef…`,
//! holding file chunks and manifest encodings alike.
//!
//! Owns the on-disk layout, durable writes (temp file, fsync, rename, fsync of
//! the directory) and verification: nothing is written under a hash it does not
//! match, and a blob found damaged is removed so it can be fetched again. It
//! must not know what a package looks like beyond encoding a manifest, nor do
//! any networking. One process per store directory: `open` deletes leftover
//! temp files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{ChunkHash, Manifest, PkgError, Result};

/// Subdirectory for blobs being written; emptied by [`ChunkStore::open`].
const TMP_DIR: &str = "tmp";

/// A directory of blobs keyed by their blake3 hash. All methods take `&self`
/// and are safe to call from several threads.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
}

/// What [`ChunkStore::verify_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs read and hashed.
    pub checked: usize,
    /// Blobs whose content did not match their hash; they were removed.
    pub removed: Vec<ChunkHash>,
}

impl ChunkStore {
    /// Opens (creating if needed) the store at `dir` and removes leftover
    /// temp files from an earlier run.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ChunkStore> {
        let dir = dir.into();
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| PkgError::io(&tmp, e))?;
        for entry in fs::read_dir(&tmp).map_err(|e| PkgError::io(&tmp, e))? {
            let entry = entry.map_err(|e| PkgError::io(&tmp, e))?;
            let p = entry.path();
            match fs::remove_file(&p) {
                Ok(()) => tracing::debug!(path = %p.display(), "removed leftover temp file"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PkgError::io(p, e)),
            }
        }
        Ok(ChunkStore { dir })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the blob for `hash` lives (whether or not it is there).
    pub fn path_of(&self, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// True when a blob for `hash` is present (not verified).
    pub fn has(&self, hash: &ChunkHash) -> bool {
        self.path_of(hash).is_file()
    }

    /// The hashes of `wanted` that are not present, in order, without repeats.
    pub fn missing(&self, wanted: &[ChunkHash]) -> Vec<ChunkHash> {
        let mut seen = std::collections::HashSet::new();
        wanted
            .iter()
            .filter(|h| seen.insert(**h) && !self.has(h))
            .copied()
            .collect()
    }

    /// Stores `data` under `hash`. Refuses bytes whose blake3 is not `hash`
    /// ([`PkgError::HashMismatch`], nothing written). Returns true if the blob
    /// is new, false if it was already present (nothing written).
    pub fn put(&self, hash: &ChunkHash, data: &[u8]) -> Result<bool> {
        let got = ChunkHash::of(data);
        if got != *hash {
            return Err(PkgError::HashMismatch {
                expected: *hash,
                got,
            });
        }
        let dest = self.path_of(hash);
        if dest.is_file() {
            return Ok(false);
        }
        let fan = self.fan_dir(hash);
        fs::create_dir_all(&fan).map_err(|e| PkgError::io(&fan, e))?;
        let tmp = self.dir.join(TMP_DIR).join(format!(
            "{}.{}.{:016x}",
            hash.to_hex(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = write_durably(&tmp, data).and_then(|()| {
            fs::rename(&tmp, &dest).map_err(|e| PkgError::io(&dest, e))?;
            sync_dir(&fan)
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(true)
    }

    /// Reads the blob for `hash` and checks it. A missing blob is
    /// [`PkgError::MissingChunk`]; one whose content does not match is
    /// removed and reported as [`PkgError::Corrupt`].
    pub fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let path = self.path_of(hash);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PkgError::MissingChunk(*hash))
            }
            Err(e) => return Err(PkgError::io(path, e)),
        };
        if ChunkHash::of(&data) != *hash {
            self.discard_corrupt(hash)?;
            return Err(PkgError::Corrupt { hash: *hash });
        }
        Ok(data)
    }

    /// Checks the blob for `hash` without keeping it in memory. True if
    /// present and intact; false if absent, or corrupt (then it is removed).
    pub fn verify(&self, hash: &ChunkHash) -> Result<bool> {
        let path = self.path_of(hash);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(PkgError::io(path, e)),
        };
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(file)
            .map_err(|e| PkgError::io(&path, e))?;
        if ChunkHash::from(hasher.finalize()) == *hash {
            Ok(true)
        } else {
            self.discard_corrupt(hash)?;
            Ok(false)
        }
    }

    /// Checks every blob in the store, removing the damaged ones. Files that
    /// are not named like a blob are left alone.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for hash in self.list()? {
            report.checked += 1;
            if !self.verify(&hash)? {
                report.removed.push(hash);
            }
        }
        Ok(report)
    }

    /// Removes the blob for `hash`; true if it was there.
    pub fn remove(&self, hash: &ChunkHash) -> Result<bool> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PkgError::io(path, e)),
        }
    }

    /// Every hash with a blob in the store, sorted.
    pub fn list(&self) -> Result<Vec<ChunkHash>> {
        let mut out = Vec::new();
        for (hash, _) in self.blobs()? {
            out.push(hash);
        }
        out.sort();
        Ok(out)
    }

    /// Number of blobs in the store.
    pub fn len(&self) -> Result<usize> {
        Ok(self.blobs()?.len())
    }

    /// True when the store holds no blob.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Total size of all blobs, in bytes.
    pub fn bytes(&self) -> Result<u64> {
        Ok(self.blobs()?.iter().map(|(_, n)| n).sum())
    }

    /// Validates `manifest`, then stores its encoding under [`Manifest::id`].
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<ChunkHash> {
        manifest.validate()?;
        let bytes = manifest.encode();
        let id = ChunkHash::of(&bytes);
        self.put(&id, &bytes)?;
        Ok(id)
    }

    /// Reads, checks, decodes and validates the manifest stored under `id`.
    pub fn get_manifest(&self, id: &ChunkHash) -> Result<Manifest> {
        Manifest::decode(&self.get(id)?)
    }

    fn fan_dir(&self, hash: &ChunkHash) -> PathBuf {
        self.dir.join(&hash.to_hex()[..2])
    }

    fn discard_corrupt(&self, hash: &ChunkHash) -> Result<()> {
        tracing::warn!(hash = %hash, "corrupt blob in chunk store, removing it");
        self.remove(hash).map(|_| ())
    }

    /// (hash, size) of every file named like a blob in its right fan-out dir.
    fn blobs(&self) -> Result<Vec<(ChunkHash, u64)>> {
        let mut out = Vec::new();
        let top = fs::read_dir(&self.dir).map_err(|e| PkgError::io(&self.dir, e))?;
        for fan in top {
            let fan = fan.map_err(|e| PkgError::io(&self.dir, e))?;
            let fan_name = fan.file_name();
            let Some(prefix) = fan_name.to_str() else {
                continue;
            };
            if prefix.len() != 2 || !fan.path().is_dir() {
                continue;
            }
            let fan_path = fan.path();
            for blob in fs::read_dir(&fan_path).map_err(|e| PkgError::io(&fan_path, e))? {
                let blob = blob.map_err(|e| PkgError::io(&fan_path, e))?;
                let name = blob.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.parse::<ChunkHash>().ok()) else {
                    continue;
                };
                if !hash.to_hex().starts_with(prefix) {
                    continue;
                }
                match blob.metadata() {
                    Ok(m) if m.is_file() => out.push((hash, m.len())),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(PkgError::io(blob.path(), e)),
                }
            }
        }
        Ok(out)
    }
}

/// Writes `data` to a new file at `path` and fsyncs it.
fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| PkgError::io(path, e))?;
    f.write_all(data).map_err(|e| PkgError::io(path, e))?;
    f.sync_all().map_err(|e| PkgError::io(path, e))
}

/// Fsyncs a directory so a rename into it survives a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkgError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::{Entry, EntryKind};

    fn store() -> (tempfile::TempDir, ChunkStore) {
        let tmp = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(tmp.path().join("chunks")).unwrap();
        (tmp, s)
    }

    #[test]
    fn put_get_has() {
        let (_t, s) = store();
        let data = b"some chunk bytes".to_vec();
        let h = ChunkHash::of(&data);
        assert!(!s.has(&h));
        assert!(s.put(&h, &data).unwrap());
        assert!(s.has(&h));
        assert!(!s.put(&h, &data).unwrap(), "second put is not new");
        assert_eq!(s.get(&h).unwrap(), data);
        let hex = h.to_hex();
        assert!(s.path_of(&h).ends_with(format!("{}/{}", &hex[..2], hex)));
        assert_eq!(s.len().unwrap(), 1);
        assert!(!s.is_empty().unwrap());
        assert_eq!(s.bytes().unwrap(), data.len() as u64);
        assert_eq!(s.list().unwrap(), vec![h]);
        // No temp file left behind.
        assert_eq!(fs::read_dir(s.dir().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn hash_mismatch_writes_nothing() {
        let (_t, s) = store();
        let claimed = ChunkHash::of(b"good");
        let e = s.put(&claimed, b"evil").unwrap_err();
        match e {
            PkgError::HashMismatch { expected, got } => {
                assert_eq!(expected, claimed);
                assert_eq!(got, ChunkHash::of(b"evil"));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(!s.has(&claimed));
        assert_eq!(s.len().unwrap(), 0);
    }

    #[test]
    fn missing_and_remove() {
        let (_t, s) = store();
        let a = ChunkHash::of(b"a");
        let b = ChunkHash::of(b"b");
        s.put(&a, b"a").unwrap();
        assert_eq!(s.missing(&[a, b, b]), vec![b]);
        assert!(matches!(s.get(&b), Err(PkgError::MissingChunk(h)) if h == b));
        assert!(!s.verify(&b).unwrap());
        assert!(s.remove(&a).unwrap());
        assert!(!s.remove(&a).unwrap());
        assert!(s.is_empty().unwrap());
    }

    #[test]
    fn corrupt_blob_is_detected_and_removed() {
        let (_t, s) = store();
        let h = ChunkHash::of(b"precious");
        s.put(&h, b"precious").unwrap();
        fs::write(s.path_of(&h), b"bitrot!!").unwrap();
        let e = s.get(&h).unwrap_err();
        assert!(matches!(e, PkgError::Corrupt { hash } if hash == h));
        assert!(e.to_string().contains(&h.to_hex()), "{e}");
        assert!(!s.has(&h), "corrupt blob removed");
        // It can be fetched again.
        assert!(s.put(&h, b"precious").unwrap());
        assert!(s.verify(&h).unwrap());
    }

    #[test]
    fn verify_all_repairs() {
        let (_t, s) = store();
        let mut hashes = Vec::new();
        for i in 0..10u8 {
            let data = vec![i; 100 + usize::from(i)];
            let h = ChunkHash::of(&data);
            s.put(&h, &data).unwrap();
            hashes.push(h);
        }
        fs::write(s.path_of(&hashes[3]), b"x").unwrap();
        fs::write(s.path_of(&hashes[7]), b"").unwrap();
        // A stray file is ignored.
        fs::write(s.dir().join("README"), b"not a blob").unwrap();
        let report = s.verify_all().unwrap();
        assert_eq!(report.checked, 10);
        let mut want = vec![hashes[3], hashes[7]];
        want.sort();
        assert_eq!(report.removed, want);
        assert_eq!(s.len().unwrap(), 8);
        assert_eq!(s.verify_all().unwrap().removed, vec![]);
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(tmp.path()).unwrap();
        let h = ChunkHash::of(b"kept");
        s.put(&h, b"kept").unwrap();
        let leftover = tmp.path().join(TMP_DIR).join("deadbeef.1.2");
        fs::write(&leftover, b"half written").unwrap();
        drop(s);
        let s = ChunkStore::open(tmp.path()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(s.get(&h).unwrap(), b"kept");
    }

    #[test]
    fn manifests_are_blobs() {
        let (_t, s) = store();
        let m = Manifest {
            name: "pkg".into(),
            version: "1".into(),
            install: None,
            remove: None,
            entries: vec![Entry {
                path: "d".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            }],
        };
        let id = s.put_manifest(&m).unwrap();
        assert_eq!(id, m.id());
        assert!(s.has(&id));
        assert_eq!(s.get_manifest(&id).unwrap(), m);
        let mut bad = m.clone();
        bad.name = "a/b".into();
        assert!(s.put_manifest(&bad).is_err());
        assert!(matches!(
            s.get_manifest(&ChunkHash::of(b"nope")),
            Err(PkgError::MissingChunk(_))
        ));
    }

    #[test]
    fn concurrent_puts_of_the_same_chunk() {
        let (_t, s) = store();
        let data = vec![42u8; 70_000];
        let h = ChunkHash::of(&data);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| s.put(&h, &data).unwrap());
            }
        });
        assert_eq!(s.get(&h).unwrap(), data);
        assert_eq!(s.len().unwrap(), 1);
    }
}
