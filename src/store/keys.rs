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

#[cfg(test)]
mod tests {
    use super::*;

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
