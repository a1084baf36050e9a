//! Typed trees: a tree's name, key type and value type declared once, so
//! callers never build or decode key bytes by hand.
//!
//! A [`Tree<K, V>`] is a [`Table`] whose keys go through a [`KeyCodec`] and
//! whose values are MessagePack (named), exactly the bytes the untyped API
//! writes. A key that does not decode is [`StoreError::Corrupt`] naming the
//! tree. No sled type appears in a signature here.

use super::keys::{KeyCodec, KeyPrefix};
use super::{Store, StoreError, Table, Txn, TxnError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;

/// A tree's declaration: its name with its key and value types.
pub struct TreeDef<K, V> {
    /// The tree's name on disk.
    pub name: &'static str,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> TreeDef<K, V> {
    /// Declares tree `name`.
    pub const fn new(name: &'static str) -> Self {
        TreeDef {
            name,
            _t: PhantomData,
        }
    }
}

impl<K, V> Clone for TreeDef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for TreeDef<K, V> {}

/// One tree with keys `K` and values `V`.
pub struct Tree<K, V> {
    table: Table,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Tree<K, V> {
    fn clone(&self) -> Self {
        Tree {
            table: self.table.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, V> super::txn::AsTable for Tree<K, V> {
    fn as_table(&self) -> &Table {
        &self.table
    }
}

impl Store {
    /// The typed tree `def`.
    pub fn tree<K, V>(&self, def: TreeDef<K, V>) -> Result<Tree<K, V>, StoreError> {
        Ok(Tree {
            table: self.table(def.name)?,
            _t: PhantomData,
        })
    }
}

impl<K: KeyCodec, V: Serialize + DeserializeOwned> Tree<K, V> {
    /// The untyped table underneath (for code not converted yet).
    pub fn raw(&self) -> &Table {
        &self.table
    }

    /// The tree's name.
    pub fn name(&self) -> &'static str {
        self.table.name
    }

    fn key(&self, bytes: &[u8]) -> Result<K, StoreError> {
        K::decode(bytes).ok_or_else(|| StoreError::Corrupt {
            tree: self.table.name.to_string(),
            reason: format!("key {bytes:02x?} does not decode"),
        })
    }

    fn pair(&self, r: Result<(Vec<u8>, V), StoreError>) -> Result<(K, V), StoreError> {
        let (k, v) = r?;
        Ok((self.key(&k)?, v))
    }

    /// The value at `key`.
    pub fn get(&self, key: &K) -> Result<Option<V>, StoreError> {
        self.table.get(&key.encode())
    }

    /// The values at `keys`, in `keys`' order (see [`Table::get_many`]: one
    /// round trip on PostgreSQL).
    pub fn get_many(&self, keys: &[K]) -> Result<Vec<Option<V>>, StoreError> {
        let raw: Vec<Vec<u8>> = keys.iter().map(KeyCodec::encode).collect();
        self.table.get_many(&raw)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> Result<bool, StoreError> {
        self.table.contains(&key.encode())
    }

    /// Writes `value` at `key` (durable after [`Store::durable`]).
    pub fn put(&self, key: &K, value: &V) -> Result<(), StoreError> {
        self.table.put(&key.encode(), value)
    }

    /// Writes many values; not atomic as a group (see [`Table::put_many`]).
    pub fn put_many<'a>(
        &self,
        items: impl IntoIterator<Item = (K, &'a V)>,
    ) -> Result<(), StoreError>
    where
        V: 'a,
    {
        self.table
            .put_many(items.into_iter().map(|(k, v)| (k.encode(), v)))
    }

    /// Removes `key`.
    pub fn remove(&self, key: &K) -> Result<(), StoreError> {
        self.table.remove(&key.encode())
    }

    /// Every entry, in key order.
    pub fn scan(&self) -> impl Iterator<Item = Result<(K, V), StoreError>> + '_ {
        self.table.scan(b"").map(move |r| self.pair(r))
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix<P: KeyPrefix<K>>(
        &self,
        prefix: &P,
    ) -> impl Iterator<Item = Result<(K, V), StoreError>> + '_ {
        self.table.scan(&prefix.prefix()).map(move |r| self.pair(r))
    }

    /// Entries with keys in `[from, ..)`, in key order.
    pub fn range_from(&self, from: &K) -> impl Iterator<Item = Result<(K, V), StoreError>> + '_ {
        self.table
            .range_from(&from.encode())
            .map(move |r| self.pair(r))
    }

    /// Entries with keys in `[from, to)`, in key order; nothing past `to` is read.
    pub fn range(&self, from: &K, to: &K) -> impl Iterator<Item = Result<(K, V), StoreError>> + '_ {
        self.table
            .range(&from.encode(), &to.encode())
            .map(move |r| self.pair(r))
    }

    /// Number of entries (walks the tree).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl Txn<'_> {
    /// Writes `value` at `key` of typed `tree` (named when the change began).
    pub fn put_at<K: KeyCodec, V: Serialize + DeserializeOwned>(
        &self,
        tree: &Tree<K, V>,
        key: &K,
        value: &V,
    ) -> Result<(), TxnError> {
        self.put(&tree.table, &key.encode(), value)
    }

    /// Removes `key` from typed `tree`.
    pub fn remove_at<K: KeyCodec, V: Serialize + DeserializeOwned>(
        &self,
        tree: &Tree<K, V>,
        key: &K,
    ) -> Result<(), TxnError> {
        self.remove(&tree.table, &key.encode())
    }

    /// The value at `key` of typed `tree`, as this change sees it.
    pub fn get_at<K: KeyCodec, V: Serialize + DeserializeOwned>(
        &self,
        tree: &Tree<K, V>,
        key: &K,
    ) -> Result<Option<V>, TxnError> {
        self.get(&tree.table, &key.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{JobId, NodeName};
    use crate::store::keys::{self, JobClient, JobPrefix, Name};

    const LEAVES: TreeDef<JobClient, u32> = TreeDef::new("leaves");
    const NAMES: TreeDef<Name, String> = TreeDef::new("names");

    fn nn(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn typed_and_untyped_see_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.tree(LEAVES).unwrap();
        t.put(&JobClient(JobId(2), nn("c1")), &7).unwrap();
        t.put(&JobClient(JobId(2), nn("c2")), &8).unwrap();
        t.put(&JobClient(JobId(3), nn("c1")), &9).unwrap();
        let raw = s.table("leaves").unwrap();
        assert_eq!(
            raw.get::<u32>(&keys::job_client(JobId(2), &nn("c2")))
                .unwrap(),
            Some(8)
        );
        raw.put(&keys::job_client(JobId(2), &nn("c0")), &6u32)
            .unwrap();
        let got: Vec<(JobClient, u32)> = t
            .scan_prefix(&JobPrefix(JobId(2)))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                (JobClient(JobId(2), nn("c0")), 6),
                (JobClient(JobId(2), nn("c1")), 7),
                (JobClient(JobId(2), nn("c2")), 8),
            ]
        );
        assert_eq!(t.len(), 4);
        t.remove(&JobClient(JobId(2), nn("c0"))).unwrap();
        assert!(!t.contains(&JobClient(JobId(2), nn("c0"))).unwrap());
        let all: Vec<_> = t.scan().map(|r| r.unwrap().1).collect();
        assert_eq!(all, vec![7, 8, 9]);
    }

    #[tokio::test]
    async fn a_key_that_does_not_decode_is_corrupt_naming_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let t = s.tree(NAMES).unwrap();
        s.table("names")
            .unwrap()
            .put(b"Not A Name", &"x".to_string())
            .unwrap();
        let r: Vec<_> = t.scan().collect();
        match &r[..] {
            [Err(StoreError::Corrupt { tree, .. })] => assert_eq!(tree, "names"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn atomic_writes_on_typed_trees() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (a, b) = (s.tree(LEAVES).unwrap(), s.tree(NAMES).unwrap());
        let k = JobClient(JobId(1), nn("c1"));
        s.atomically(&[&a, &b], |w| {
            w.put_at(&a, &k, &1)?;
            w.put_at(&b, &Name(nn("r1")), &"x".into())?;
            assert_eq!(w.get_at(&a, &k)?, Some(1));
            w.remove_at(&b, &Name(nn("r1")))
        })
        .unwrap();
        assert_eq!(a.get(&k).unwrap(), Some(1));
        assert!(b.is_empty());
    }
}
