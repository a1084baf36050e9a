//! The agent's inventory: which package versions are installed, where, and
//! how to remove them. One entry per package name, in the store's
//! `inventory` tree under `agent name ++ 0 ++ package name` (so the agents of
//! a swarm keep theirs apart), and where each agent's package files live on
//! disk (`DATA_DIR/packages/NAME/{chunks,installed}`).
//!
//! Knows nothing of fetching or running: `install.rs` decides, this records.

use crate::pkg::ChunkHash;
use crate::proto::{now_ms, Attempt, Event, Installed, InventoryReport, JobId, NodeName};
use crate::store::{keys, Outbox, StoreError, Table};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The inventory tree.
pub(crate) const TREE: &str = "inventory";

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InventoryEntry {
    /// Package name.
    pub name: String,
    /// The installed version.
    pub version: String,
    /// Its manifest's address (as signed by HQ).
    pub manifest: ChunkHash,
    /// Its directory's name under `installed/NAME/` (see [`install_dir_name`]).
    pub dir: String,
    /// The manifest's remove command, run before the tree is deleted.
    #[serde(default)]
    pub remove: Option<String>,
    /// The job that installed it.
    pub job: JobId,
    /// And its attempt.
    pub attempt: Attempt,
    /// When it was recorded, unix ms.
    pub at_ms: u64,
}

impl InventoryEntry {
    /// `name@version`, for reasons and logs.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Where one agent keeps its package files.
#[derive(Clone, Debug)]
pub(crate) struct PkgDirs {
    /// `DATA_DIR/packages/NAME`.
    pub root: PathBuf,
}

impl PkgDirs {
    /// Agent `me`'s directories under `data_dir` (not created).
    pub fn new(data_dir: &Path, me: &NodeName) -> PkgDirs {
        PkgDirs {
            root: data_dir.join("packages").join(me.as_str()),
        }
    }

    /// The chunk store, kept between installs.
    pub fn chunks(&self) -> PathBuf {
        self.root.join("chunks")
    }

    /// `installed/`: one directory per package name.
    pub fn installed(&self) -> PathBuf {
        self.root.join("installed")
    }

    /// `installed/NAME/`: the versions of one package.
    pub fn package(&self, name: &str) -> PathBuf {
        self.installed().join(name)
    }

    /// Where an inventory entry's tree is.
    pub fn tree_of(&self, e: &InventoryEntry) -> PathBuf {
        self.package(&e.name).join(&e.dir)
    }
}

/// The directory name a (job, attempt) installs `version` into: fresh for
/// every attempt, so an install never writes over anything.
pub(crate) fn install_dir_name(version: &str, job: JobId, attempt: Attempt) -> String {
    format!("{version}-j{job}a{attempt}")
}

/// The name an installed tree is renamed to while it is being deleted.
pub(crate) fn trash_dir_name(job: JobId, attempt: Attempt) -> String {
    format!(".removing-j{job}a{attempt}")
}

fn key(me: &NodeName, package: &str) -> Vec<u8> {
    let mut k = keys::name_prefix(me);
    k.extend_from_slice(package.as_bytes());
    k
}

/// The entry for `package`, if installed.
pub(crate) fn get(
    t: &Table,
    me: &NodeName,
    package: &str,
) -> Result<Option<InventoryEntry>, StoreError> {
    t.get(&key(me, package))
}

/// Records `e`, replacing any earlier version of the same package (not yet
/// durable).
pub(crate) fn put(t: &Table, me: &NodeName, e: &InventoryEntry) -> Result<(), StoreError> {
    t.put(&key(me, &e.name), e)
}

/// Drops `package` (not yet durable).
pub(crate) fn drop_entry(t: &Table, me: &NodeName, package: &str) -> Result<(), StoreError> {
    t.remove(&key(me, package))
}

/// Every package agent `me` has installed, by name.
pub(crate) fn list(t: &Table, me: &NodeName) -> Result<Vec<InventoryEntry>, StoreError> {
    t.scan::<InventoryEntry>(&keys::name_prefix(me))
        .map(|r| r.map(|(_, v)| v))
        .collect()
}

/// The report of `me`'s inventory as its relay will pass it on.
pub(crate) fn report(me: &NodeName, relay: &NodeName, entries: &[InventoryEntry]) -> Event {
    Event::Inventory(InventoryReport {
        client: me.clone(),
        relay: relay.clone(),
        packages: entries
            .iter()
            .map(|e| Installed {
                name: e.name.clone(),
                version: e.version.clone(),
                manifest: e.manifest,
                at_ms: e.at_ms,
            })
            .collect(),
        at_ms: now_ms(),
    })
}

/// Queues `me`'s whole inventory upward (not yet durable).
pub(crate) fn push_report(
    t: &Table,
    outbox: &Outbox,
    me: &NodeName,
    relay: &NodeName,
) -> Result<(), StoreError> {
    let entries = list(t, me)?;
    outbox.push(&[report(me, relay, &entries)])?;
    Ok(())
}

/// One installed package as `agent inventory` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryView {
    /// The agent.
    pub client: NodeName,
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Manifest address (hex).
    pub manifest: String,
    /// Where its tree is.
    pub dir: PathBuf,
    /// The job that installed it.
    pub job: JobId,
    /// When, unix ms.
    pub at_ms: u64,
}

/// Every package of every agent in a store.
pub(crate) fn all(t: &Table, data_dir: &Path) -> Result<Vec<InventoryView>, StoreError> {
    let mut out = Vec::new();
    for r in t.scan::<InventoryEntry>(b"") {
        let (k, e) = r?;
        let Some(client) = k
            .iter()
            .position(|b| *b == 0)
            .and_then(|i| std::str::from_utf8(&k[..i]).ok())
            .and_then(|s| NodeName::new(s).ok())
        else {
            continue;
        };
        let dir = PkgDirs::new(data_dir, &client).tree_of(&e);
        out.push(InventoryView {
            client,
            name: e.name,
            version: e.version,
            manifest: e.manifest.to_hex(),
            dir,
            job: e.job,
            at_ms: e.at_ms,
        });
    }
    Ok(out)
}

/// Start-up housekeeping for agent `me` (nothing of its may be running):
/// drops entries whose tree is gone (a removal cut short) and deletes trees
/// no entry names (an install cut short, an old version or a removal not yet
/// cleaned up). Returns whether the inventory changed.
pub(crate) fn reconcile(t: &Table, me: &NodeName, dirs: &PkgDirs) -> Result<bool, StoreError> {
    let entries = list(t, me)?;
    let mut changed = false;
    let mut keep = std::collections::HashSet::new();
    for e in &entries {
        let tree = dirs.tree_of(e);
        if tree.is_dir() {
            keep.insert(tree);
        } else {
            tracing::warn!(package = %e.label(), dir = %tree.display(), "installed tree is gone; dropping it from the inventory");
            drop_entry(t, me, &e.name)?;
            changed = true;
        }
    }
    let Ok(names) = std::fs::read_dir(dirs.installed()) else {
        return Ok(changed);
    };
    for name in names.flatten() {
        let pkg = name.path();
        let Ok(versions) = std::fs::read_dir(&pkg) else {
            continue;
        };
        for v in versions.flatten() {
            let p = v.path();
            if !keep.contains(&p) {
                tracing::info!(dir = %p.display(), "removing a package tree no inventory entry names");
                if let Err(e) = remove_tree(&p) {
                    tracing::warn!(dir = %p.display(), error = %e, "cannot remove a stale package tree");
                }
            }
        }
        // Only succeeds when empty.
        let _ = std::fs::remove_dir(&pkg);
    }
    Ok(changed)
}

/// Deletes a tree (or a stray file); a missing one is fine.
pub(crate) fn remove_tree(p: &Path) -> std::io::Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, version: &str, job: u64) -> InventoryEntry {
        InventoryEntry {
            name: name.into(),
            version: version.into(),
            manifest: ChunkHash::of(name.as_bytes()),
            dir: install_dir_name(version, JobId(job), Attempt(1)),
            remove: Some("echo bye".into()),
            job: JobId(job),
            attempt: Attempt(1),
            at_ms: 5,
        }
    }

    #[tokio::test]
    async fn entries_round_trip_per_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(tmp.path()).unwrap();
        let t = store.table(TREE).unwrap();
        let a = NodeName::new("a1").unwrap();
        let b = NodeName::new("a10").unwrap();
        put(&t, &a, &entry("foo", "1", 3)).unwrap();
        put(&t, &a, &entry("bar", "2", 4)).unwrap();
        put(&t, &b, &entry("foo", "9", 5)).unwrap();
        // A newer version replaces the older one.
        put(&t, &a, &entry("foo", "2", 6)).unwrap();
        let got = list(&t, &a).unwrap();
        assert_eq!(got, vec![entry("bar", "2", 4), entry("foo", "2", 6)]);
        assert_eq!(get(&t, &b, "foo").unwrap(), Some(entry("foo", "9", 5)));
        assert_eq!(get(&t, &b, "bar").unwrap(), None);
        drop_entry(&t, &a, "foo").unwrap();
        assert_eq!(list(&t, &a).unwrap(), vec![entry("bar", "2", 4)]);
        assert_eq!(all(&t, tmp.path()).unwrap().len(), 2);
        let Event::Inventory(r) = report(&a, &b, &list(&t, &a).unwrap()) else {
            panic!("not an inventory report");
        };
        assert_eq!(r.client, a);
        assert_eq!(r.packages.len(), 1);
        assert_eq!(r.packages[0].version, "2");
    }

    #[test]
    fn install_dirs_are_fresh_per_attempt() {
        assert_eq!(install_dir_name("1.2", JobId(7), Attempt(2)), "1.2-j7a2");
        assert_ne!(
            install_dir_name("1", JobId(7), Attempt(1)),
            install_dir_name("1", JobId(7), Attempt(2))
        );
        let d = PkgDirs::new(Path::new("/d"), &NodeName::new("web1").unwrap());
        assert_eq!(d.chunks(), Path::new("/d/packages/web1/chunks"));
        assert_eq!(
            d.tree_of(&entry("foo", "1", 3)),
            Path::new("/d/packages/web1/installed/foo/1-j3a1")
        );
    }

    #[tokio::test]
    async fn reconcile_drops_what_is_gone_and_deletes_strays() {
        let tmp = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(tmp.path()).unwrap();
        let t = store.table(TREE).unwrap();
        let me = NodeName::new("a1").unwrap();
        let dirs = PkgDirs::new(tmp.path(), &me);
        let kept = entry("foo", "1", 3);
        let gone = entry("bar", "1", 4);
        put(&t, &me, &kept).unwrap();
        put(&t, &me, &gone).unwrap();
        std::fs::create_dir_all(dirs.tree_of(&kept)).unwrap();
        let stray = dirs.package("foo").join("0-j1a1");
        std::fs::create_dir_all(&stray).unwrap();
        let empty = dirs.package("baz");
        std::fs::create_dir_all(empty.join(trash_dir_name(JobId(9), Attempt(1)))).unwrap();
        assert!(reconcile(&t, &me, &dirs).unwrap());
        assert_eq!(list(&t, &me).unwrap(), vec![kept.clone()]);
        assert!(dirs.tree_of(&kept).is_dir());
        assert!(!stray.exists());
        assert!(!empty.exists());
        assert!(!reconcile(&t, &me, &dirs).unwrap());
    }
}
