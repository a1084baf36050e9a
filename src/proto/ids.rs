//! Identifiers: node names, roles, job ids and attempt numbers.
//!
//! Owns validation of names (`[a-z0-9][a-z0-9._-]{0,62}`); knows nothing of
//! sockets, certificates or storage.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A name is not of the form `[a-z0-9][a-z0-9._-]{0,62}`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid name {0:?}: expected 1-63 of [a-z0-9._-], starting with a letter or digit")]
pub struct InvalidName(pub String);

/// The name of a node (HQ, relay, agent or admin), as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Validates and wraps a name.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(NodeName(s))
        } else {
            Err(InvalidName(s))
        }
    }
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, InvalidName> {
        NodeName::new(s)
    }
}
impl From<NodeName> for String {
    fn from(n: NodeName) -> String {
        n.0
    }
}
impl FromStr for NodeName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        NodeName::new(s)
    }
}
impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The role a certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The headquarters manager.
    Hq,
    /// A relay manager.
    Relay,
    /// A client running jobs.
    Agent,
    /// An operator running admin commands.
    Admin,
}

impl Role {
    /// The role as it appears in a SPIFFE id.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hq => "hq",
            Role::Relay => "relay",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }
}

impl Role {
    /// The role with its article: "an agent", "a relay".
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Hq => "an hq",
            Role::Relay => "a relay",
            Role::Agent => "an agent",
            Role::Admin => "an admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hq" => Ok(Role::Hq),
            "relay" => Ok(Role::Relay),
            "agent" => Ok(Role::Agent),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?}: expected hq, relay, agent or admin"
            )),
        }
    }
}
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job id, assigned by HQ, counting from 1. Shown and serialized as text
/// (`"17"`), as the command-line contract's JSON has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct JobId(pub u64);

impl Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Num(0) => Err(serde::de::Error::custom(
                "invalid job id 0: expected a positive number",
            )),
            Either::Num(n) => Ok(JobId(n)),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl FromStr for JobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(JobId)
            .ok_or_else(|| format!("invalid job id {s:?}: expected a positive number"))
    }
}

/// An attempt number: 1 for the original run, n+1 for each rerun.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Attempt(pub u32);

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "r1", "c-00001", "x.y_z", "0abc"] {
            assert!(NodeName::new(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in ["", "A", "-a", ".a", "a/b", "a b", long.as_str(), "é"] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_and_ids() {
        assert_eq!("relay".parse::<Role>(), Ok(Role::Relay));
        assert!("root".parse::<Role>().is_err());
        assert_eq!("7".parse::<JobId>(), Ok(JobId(7)));
        assert!("0".parse::<JobId>().is_err());
        assert!("x".parse::<JobId>().is_err());
    }
}
