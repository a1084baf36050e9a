//! The key layout: big-endian integers so byte order is numeric order, names
//! as their bytes, a 0 byte after a name that is followed by more fields.
//!
//! | key                         | used for                                   |
//! |-----------------------------|--------------------------------------------|
//! | `job`                       | jobs by id                                 |
//! | `job ++ client`             | a leaf of a job                            |
//! | `job ++ attempt`            | an attempt                                 |
//! | `name`                      | relays, clients                            |
//! | `name ++ 0 ++ job ++ attempt` | an assignment queued for a child         |
//! | `client ++ 0 ++ job`        | a home leaf indexed by client              |

use crate::proto::{Attempt, JobId, NodeName};

/// Key of a job.
pub fn job(job: JobId) -> Vec<u8> {
    job.0.to_be_bytes().to_vec()
}

/// Key of a leaf: job then client.
pub fn job_client(job: JobId, client: &NodeName) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + client.as_str().len());
    k.extend_from_slice(&job.0.to_be_bytes());
    k.extend_from_slice(client.as_str().as_bytes());
    k
}

/// Key of an attempt.
pub fn job_attempt(job: JobId, attempt: Attempt) -> Vec<u8> {
    let mut k = job.0.to_be_bytes().to_vec();
    k.extend_from_slice(&attempt.0.to_be_bytes());
    k
}

/// Key of a named thing.
pub fn name(n: &NodeName) -> Vec<u8> {
    n.as_str().as_bytes().to_vec()
}

/// Prefix of everything keyed under a name.
pub fn name_prefix(n: &NodeName) -> Vec<u8> {
    let mut k = n.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

/// Key of an assignment queued for a child.
pub fn name_job_attempt(n: &NodeName, job: JobId, attempt: Attempt) -> Vec<u8> {
    let mut k = name_prefix(n);
    k.extend_from_slice(&job.0.to_be_bytes());
    k.extend_from_slice(&attempt.0.to_be_bytes());
    k
}

/// Key of a leaf indexed by client.
pub fn name_job(n: &NodeName, job: JobId) -> Vec<u8> {
    let mut k = name_prefix(n);
    k.extend_from_slice(&job.0.to_be_bytes());
    k
}

/// Key of a name under another name (a client queued for a child).
pub fn name_name(n: &NodeName, m: &NodeName) -> Vec<u8> {
    let mut k = name_prefix(n);
    k.extend_from_slice(m.as_str().as_bytes());
    k
}

/// A big-endian u64 key.
pub fn seq(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Reads a big-endian u64 from the first 8 bytes of a key.
pub fn read_u64(k: &[u8]) -> Option<u64> {
    k.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// A typed key: encodes to the bytes of the layout above and decodes back.
/// Integers are big-endian, so byte order is numeric order.
pub trait KeyCodec: Sized {
    /// The key's bytes.
    fn encode(&self) -> Vec<u8>;
    /// The key from its bytes; `None` when they are not such a key.
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// A prefix of keys of type `K`, for scans.
pub trait KeyPrefix<K> {
    /// The prefix's bytes.
    fn prefix(&self) -> Vec<u8>;
}

fn be_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

fn be_u32(b: &[u8]) -> Option<u32> {
    b.try_into().ok().map(u32::from_be_bytes)
}

fn node_name(b: &[u8]) -> Option<NodeName> {
    NodeName::new(std::str::from_utf8(b).ok()?).ok()
}

/// Splits `name ++ 0 ++ rest`.
fn split_name(b: &[u8]) -> Option<(NodeName, &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((node_name(&b[..i])?, &b[i + 1..]))
}

/// `job`: a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobKey(pub JobId);

impl KeyCodec for JobKey {
    fn encode(&self) -> Vec<u8> {
        job(self.0)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        be_u64(b).map(|j| JobKey(JobId(j)))
    }
}

/// `job ++ client`: a leaf of a job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobClient(pub JobId, pub NodeName);

impl KeyCodec for JobClient {
    fn encode(&self) -> Vec<u8> {
        job_client(self.0, &self.1)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        Some(JobClient(JobId(be_u64(b.get(..8)?)?), node_name(&b[8..])?))
    }
}

/// `job ++ attempt`: an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobAttempt(pub JobId, pub Attempt);

impl KeyCodec for JobAttempt {
    fn encode(&self) -> Vec<u8> {
        job_attempt(self.0, self.1)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 12 {
            return None;
        }
        Some(JobAttempt(
            JobId(be_u64(&b[..8])?),
            Attempt(be_u32(&b[8..])?),
        ))
    }
}

/// Every key of one job (`JobClient`, `JobAttempt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPrefix(pub JobId);

impl KeyPrefix<JobClient> for JobPrefix {
    fn prefix(&self) -> Vec<u8> {
        job(self.0)
    }
}

impl KeyPrefix<JobAttempt> for JobPrefix {
    fn prefix(&self) -> Vec<u8> {
        job(self.0)
    }
}

/// `name`: a relay, a client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(pub NodeName);

impl KeyCodec for Name {
    fn encode(&self) -> Vec<u8> {
        name(&self.0)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        node_name(b).map(Name)
    }
}

/// `name ++ 0 ++ job`: a home leaf indexed by client.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameJob(pub NodeName, pub JobId);

impl KeyCodec for NameJob {
    fn encode(&self) -> Vec<u8> {
        name_job(&self.0, self.1)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        let (n, rest) = split_name(b)?;
        Some(NameJob(n, JobId(be_u64(rest)?)))
    }
}

/// `name ++ 0 ++ job ++ attempt`: an assignment queued for a child.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameJobAttempt(pub NodeName, pub JobId, pub Attempt);

impl KeyCodec for NameJobAttempt {
    fn encode(&self) -> Vec<u8> {
        name_job_attempt(&self.0, self.1, self.2)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        let (n, rest) = split_name(b)?;
        if rest.len() != 12 {
            return None;
        }
        Some(NameJobAttempt(
            n,
            JobId(be_u64(&rest[..8])?),
            Attempt(be_u32(&rest[8..])?),
        ))
    }
}

/// `name ++ 0 ++ name`: a name under another name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameName(pub NodeName, pub NodeName);

impl KeyCodec for NameName {
    fn encode(&self) -> Vec<u8> {
        name_name(&self.0, &self.1)
    }
    fn decode(b: &[u8]) -> Option<Self> {
        let (n, rest) = split_name(b)?;
        Some(NameName(n, node_name(rest)?))
    }
}

/// Every key under one name (`NameJob`, `NameJobAttempt`, `NameName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePrefix(pub NodeName);

impl KeyPrefix<NameJob> for NamePrefix {
    fn prefix(&self) -> Vec<u8> {
        name_prefix(&self.0)
    }
}

impl KeyPrefix<NameJobAttempt> for NamePrefix {
    fn prefix(&self) -> Vec<u8> {
        name_prefix(&self.0)
    }
}

impl KeyPrefix<NameName> for NamePrefix {
    fn prefix(&self) -> Vec<u8> {
        name_prefix(&self.0)
    }
}

/// A big-endian u64: sequence numbers, ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl KeyCodec for Seq {
    fn encode(&self) -> Vec<u8> {
        seq(self.0).to_vec()
    }
    fn decode(b: &[u8]) -> Option<Self> {
        be_u64(b).map(Seq)
    }
}

/// `due ++ job ++ attempt`: an attempt indexed by when it is due (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DueJobAttempt(pub u64, pub JobId, pub Attempt);

impl KeyCodec for DueJobAttempt {
    fn encode(&self) -> Vec<u8> {
        let mut k = seq(self.0).to_vec();
        k.extend_from_slice(&job_attempt(self.1, self.2));
        k
    }
    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != 20 {
            return None;
        }
        let JobAttempt(j, a) = JobAttempt::decode(&b[8..])?;
        Some(DueJobAttempt(be_u64(&b[..8])?, j, a))
    }
}

/// Any key at all, as its raw bytes (trees whose keys are not fixed yet).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Raw(pub Vec<u8>);

impl KeyCodec for Raw {
    fn encode(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Raw(b.to_vec()))
    }
}

impl KeyPrefix<Raw> for Raw {
    fn prefix(&self) -> Vec<u8> {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nn(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn roundtrip<K: KeyCodec + PartialEq + std::fmt::Debug>(k: K, old: Vec<u8>) {
        assert_eq!(k.encode(), old, "{k:?}: bytes differ from the old layout");
        assert_eq!(K::decode(&k.encode()), Some(k));
    }

    #[test]
    fn codecs_match_the_old_bytes_and_round_trip() {
        for j in [0u64, 1, 255, 256, u64::MAX] {
            roundtrip(JobKey(JobId(j)), job(JobId(j)));
            roundtrip(Seq(j), seq(j).to_vec());
            for a in [0u32, 1, 300, u32::MAX] {
                roundtrip(
                    JobAttempt(JobId(j), Attempt(a)),
                    job_attempt(JobId(j), Attempt(a)),
                );
                roundtrip(
                    NameJobAttempt(nn("c-1.x"), JobId(j), Attempt(a)),
                    name_job_attempt(&nn("c-1.x"), JobId(j), Attempt(a)),
                );
            }
            roundtrip(
                JobClient(JobId(j), nn("c1")),
                job_client(JobId(j), &nn("c1")),
            );
            roundtrip(NameJob(nn("r10"), JobId(j)), name_job(&nn("r10"), JobId(j)));
        }
        roundtrip(Name(nn("relay_1")), name(&nn("relay_1")));
        let mut due = seq(1_000).to_vec();
        due.extend_from_slice(&job_attempt(JobId(3), Attempt(2)));
        roundtrip(DueJobAttempt(1_000, JobId(3), Attempt(2)), due);
        assert!(
            DueJobAttempt(255, JobId(9), Attempt(9)).encode()
                < DueJobAttempt(256, JobId(1), Attempt(1)).encode()
        );
        assert_eq!(DueJobAttempt::decode(&[0; 19]), None);
        roundtrip(
            NameName(nn("r1"), nn("c2")),
            name_name(&nn("r1"), &nn("c2")),
        );
        assert_eq!(
            KeyPrefix::<JobClient>::prefix(&JobPrefix(JobId(3))),
            job(JobId(3))
        );
        assert_eq!(
            KeyPrefix::<NameJob>::prefix(&NamePrefix(nn("r1"))),
            name_prefix(&nn("r1"))
        );
    }

    #[test]
    fn bad_bytes_do_not_decode() {
        assert_eq!(JobKey::decode(b"short"), None);
        assert_eq!(JobKey::decode(&[0; 9]), None);
        assert_eq!(JobAttempt::decode(&[0; 11]), None);
        assert_eq!(JobClient::decode(&[0; 8]), None); // no client name
        assert_eq!(JobClient::decode(&[0, 0, 0, 0, 0, 0, 0, 1, b'A']), None);
        assert_eq!(Name::decode(b"Bad Name"), None);
        assert_eq!(NameJob::decode(b"r1"), None); // no 0 byte
        assert_eq!(NameJob::decode(b"r1\0abc"), None);
        assert_eq!(NameName::decode(b"r1\0"), None);
    }

    #[test]
    fn typed_byte_order_is_numeric_order() {
        let enc = |j: u64| JobKey(JobId(j)).encode();
        for (a, b) in [
            (1u64, 2u64),
            (2, 10),
            (255, 256),
            (65_535, 65_536),
            (1 << 40, u64::MAX),
        ] {
            assert!(enc(a) < enc(b), "{a} < {b}");
            assert!(Seq(a).encode() < Seq(b).encode());
            assert!(
                JobAttempt(JobId(7), Attempt(a as u32)).encode()
                    < JobAttempt(JobId(7), Attempt(b as u32 | 0x8000_0000)).encode()
            );
            assert!(NameJob(nn("c1"), JobId(a)).encode() < NameJob(nn("c1"), JobId(b)).encode());
            assert!(
                JobClient(JobId(a), nn("zz")).encode() < JobClient(JobId(b), nn("aa")).encode()
            );
        }
        // A name's prefix does not cover a longer name.
        let p = KeyPrefix::<NameJob>::prefix(&NamePrefix(nn("r1")));
        assert!(!NameJob(nn("r10"), JobId(1)).encode().starts_with(&p));
    }

    #[test]
    fn byte_order_is_numeric_order() {
        assert!(job(JobId(2)) < job(JobId(10)));
        assert!(job(JobId(255)) < job(JobId(256)));
        let c = NodeName::new("c1").unwrap();
        assert!(job_client(JobId(1), &c) < job(JobId(2)));
        assert_eq!(read_u64(&job_client(JobId(7), &c)), Some(7));
        let r1 = NodeName::new("r1").unwrap();
        let r10 = NodeName::new("r10").unwrap();
        // a name's prefix does not cover a longer name
        assert!(!name_job_attempt(&r10, JobId(1), Attempt(1)).starts_with(&name_prefix(&r1)));
    }
}
