//! The parent's side of downward delivery shared by HQ and relays: messages
//! queued durably for a child until it acknowledges them, re-sent whenever it
//! connects, and sent at once to children connected now.
//!
//! One queue holds every kind of message a child must eventually get: an
//! assignment, a `Forget`, a `Cancel`, a `Purge`, a `Pause` or `Resume`. Each has a [`QueueKey`]
//! and the child's acknowledgement names the same key, so "re-send on
//! connect, clear on ack" is written once. Knows nothing of what the
//! messages mean.

use super::{send_soon, SessionTx};
use crate::proto::{Attempt, JobId, Msg, NodeName};
use crate::store::{keys, StoreError, Table, Txn, TxnError};
use std::collections::HashMap;
use std::sync::Mutex;

/// What a queued message is: at most one message per child and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueKey {
    /// An assignment (attempt of a job).
    Assign(JobId, Attempt),
    /// A `Forget` of a client.
    Forget(NodeName),
    /// A `Cancel` of a job.
    Cancel(JobId),
    /// A `Purge` by its id.
    Purge(u64),
    /// HQ's placement of an agent (a newer one replaces the queued one).
    Placement(NodeName),
    /// A `Pause` or `Resume` of a job, by HQ's sequence number. Sorts before
    /// everything else (tag 0), so a relay that reconnects learns a job is
    /// paused before it gets the job's assignment; within a job, by `seq`,
    /// so the latest control is applied last.
    Control(JobId, u64),
}

impl QueueKey {
    /// The key of the message `msg` queues, if it is a queued kind.
    pub fn of(msg: &Msg) -> Option<QueueKey> {
        match msg {
            Msg::Assign(a) => Some(QueueKey::Assign(a.job, a.attempt)),
            Msg::Forget { client, .. } => Some(QueueKey::Forget(client.clone())),
            Msg::Cancel { job } => Some(QueueKey::Cancel(*job)),
            Msg::Purge { id, .. } => Some(QueueKey::Purge(*id)),
            Msg::Placement(p) => p.placement().ok().map(|p| QueueKey::Placement(p.client)),
            Msg::Pause { job, seq, .. } | Msg::Resume { job, seq } => {
                Some(QueueKey::Control(*job, *seq))
            }
            _ => None,
        }
    }

    /// The key an acknowledgement clears, if `msg` is one.
    pub fn of_ack(msg: &Msg) -> Option<QueueKey> {
        match msg {
            Msg::AssignAck { job, attempt } => Some(QueueKey::Assign(*job, *attempt)),
            Msg::ForgetAck { client } => Some(QueueKey::Forget(client.clone())),
            Msg::CancelAck { job } => Some(QueueKey::Cancel(*job)),
            Msg::PurgeAck { id } => Some(QueueKey::Purge(*id)),
            Msg::PlacementAck { client } => Some(QueueKey::Placement(client.clone())),
            Msg::PauseAck { job, seq } | Msg::ResumeAck { job, seq } => {
                Some(QueueKey::Control(*job, *seq))
            }
            _ => None,
        }
    }

    /// Stored key: child ++ 0 ++ tag ++ fields. Assignments sort first (by
    /// job, then attempt), so a child gets a job before its cancel.
    fn bytes(&self, child: &NodeName) -> Vec<u8> {
        let mut k = keys::name_prefix(child);
        match self {
            QueueKey::Assign(job, attempt) => {
                k.push(1);
                k.extend_from_slice(&job.0.to_be_bytes());
                k.extend_from_slice(&attempt.0.to_be_bytes());
            }
            QueueKey::Forget(client) => {
                k.push(2);
                k.extend_from_slice(client.as_str().as_bytes());
            }
            QueueKey::Cancel(job) => {
                k.push(3);
                k.extend_from_slice(&job.0.to_be_bytes());
            }
            QueueKey::Purge(id) => {
                k.push(4);
                k.extend_from_slice(&id.to_be_bytes());
            }
            QueueKey::Placement(client) => {
                k.push(5);
                k.extend_from_slice(client.as_str().as_bytes());
            }
            QueueKey::Control(job, seq) => {
                k.push(0);
                k.extend_from_slice(&job.0.to_be_bytes());
                k.extend_from_slice(&seq.to_be_bytes());
            }
        }
        k
    }
}

/// Messages queued for children until they acknowledge them.
#[derive(Clone)]
pub struct DownQueue {
    table: Table,
}

impl DownQueue {
    /// The queue kept in `table` (child ++ 0 ++ tag ++ fields -> Msg).
    pub fn new(table: Table) -> DownQueue {
        DownQueue { table }
    }

    /// Queues `msg` for `child` (durable after the store's next flush).
    /// A message of a kind that is never queued is refused.
    pub fn put(&self, child: &NodeName, msg: &Msg) -> Result<(), StoreError> {
        let key = QueueKey::of(msg).ok_or_else(|| StoreError::Corrupt {
            tree: "down queue".into(),
            reason: format!("a {} message is not queued", msg.kind()),
        })?;
        self.table.put(&key.bytes(child), msg)
    }

    /// Queues `msg` for `child` as part of an atomic change
    /// ([`crate::store::Store::atomically`], which must name [`Self::table`]).
    pub fn put_in(&self, w: &Txn<'_>, child: &NodeName, msg: &Msg) -> Result<(), TxnError> {
        let key = QueueKey::of(msg).ok_or_else(|| StoreError::Corrupt {
            tree: "down queue".into(),
            reason: format!("a {} message is not queued", msg.kind()),
        })?;
        w.put(&self.table, &key.bytes(child), msg)
    }

    /// The table the queue lives in, to name in an atomic change.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// Whether a message with `key` is queued for `child`.
    pub fn contains(&self, child: &NodeName, key: &QueueKey) -> Result<bool, StoreError> {
        self.table.contains(&key.bytes(child))
    }

    /// Drops what `ack` (from `child`) acknowledges. Returns whether `ack`
    /// was an acknowledgement at all.
    pub fn ack(&self, child: &NodeName, ack: &Msg) -> Result<bool, StoreError> {
        match QueueKey::of_ack(ack) {
            Some(key) => {
                self.remove(child, &key)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops the message with `key` queued for `child`.
    pub fn remove(&self, child: &NodeName, key: &QueueKey) -> Result<(), StoreError> {
        self.table.remove(&key.bytes(child))
    }

    /// Everything queued for `child`, in key order (assignments first).
    pub fn queued(&self, child: &NodeName) -> Result<Vec<Msg>, StoreError> {
        self.table
            .scan::<Msg>(&keys::name_prefix(child))
            .map(|r| r.map(|(_, m)| m))
            .collect()
    }

    /// How many messages are queued for every child together (walks the tree).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Nothing queued for anyone.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Sends freshly queued messages to the children connected now; the others
/// get them from the queue when they connect.
pub fn send_now(children: &Mutex<HashMap<NodeName, SessionTx>>, msgs: Vec<(NodeName, Msg)>) {
    let children = children.lock().unwrap_or_else(|p| p.into_inner());
    for (child, msg) in msgs {
        if let Some(tx) = children.get(&child) {
            send_soon(tx, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn queued_until_acked_per_child_assignments_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = DownQueue::new(store.table("q").unwrap());
        let (r1, r10) = (n("r1"), n("r10"));
        q.put(&r1, &Msg::Cancel { job: JobId(7) }).unwrap();
        q.put(
            &r1,
            &Msg::Forget {
                client: n("c1"),
                moved_to: n("r2"),
            },
        )
        .unwrap();
        q.put(
            &r1,
            &Msg::Purge {
                id: 3,
                jobs: vec![JobId(1)],
            },
        )
        .unwrap();
        q.put(&r10, &Msg::Cancel { job: JobId(7) }).unwrap();
        // Controls first, in HQ's order within a job.
        q.put(
            &r1,
            &Msg::Resume {
                job: JobId(7),
                seq: 9,
            },
        )
        .unwrap();
        q.put(
            &r1,
            &Msg::Pause {
                job: JobId(7),
                seq: 4,
                reason: "x".into(),
            },
        )
        .unwrap();
        let kinds: Vec<&str> = q.queued(&r1).unwrap().iter().map(|m| m.kind()).collect();
        assert_eq!(kinds, vec!["pause", "resume", "forget", "cancel", "purge"]);
        assert!(q
            .ack(
                &r1,
                &Msg::PauseAck {
                    job: JobId(7),
                    seq: 4
                }
            )
            .unwrap());
        assert!(q
            .ack(
                &r1,
                &Msg::ResumeAck {
                    job: JobId(7),
                    seq: 9
                }
            )
            .unwrap());
        // A name's queue does not cover a longer name's.
        assert_eq!(q.queued(&r10).unwrap().len(), 1);
        assert!(q.ack(&r1, &Msg::CancelAck { job: JobId(7) }).unwrap());
        assert!(!q.ack(&r1, &Msg::Heartbeat).unwrap());
        assert!(q.ack(&r1, &Msg::ForgetAck { client: n("c1") }).unwrap());
        assert!(q.ack(&r1, &Msg::PurgeAck { id: 3 }).unwrap());
        assert!(q.queued(&r1).unwrap().is_empty());
        assert!(q.contains(&r10, &QueueKey::Cancel(JobId(7))).unwrap());
        assert!(q.put(&r1, &Msg::Heartbeat).is_err());
    }
}
