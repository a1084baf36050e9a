//! The `--json` shapes of the fleet: clients, relays, the tree and
//! enrollment tokens. Data only: HQ fills them, the CLI shows them.

use crate::proto::ids::NodeName;
use crate::proto::pkg::Installed;
use serde::{Deserialize, Serialize};

/// One client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientView {
    /// The client.
    pub name: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// Since when, unix ms.
    pub since_ms: u64,
    /// Installed packages, as last reported.
    pub packages: Vec<Installed>,
    /// When the inventory was reported, unix ms.
    pub inventory_at_ms: Option<u64>,
    /// `online` or `offline`, as its home relay last reported.
    #[serde(default)]
    pub state: String,
    /// When it was last seen (now while online), unix ms; 0: never reported.
    #[serde(default)]
    pub last_seen_ms: u64,
    /// Its labels, as it last came online.
    #[serde(default)]
    pub labels: crate::proto::labels::Labels,
    /// Its agent's version, as it last came online.
    #[serde(default)]
    pub version: Option<String>,
}

/// One client in `hq client list --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntry {
    /// The client.
    pub client: NodeName,
    /// Its home relay (unknown for a revoked client: `null`).
    pub relay: Option<NodeName>,
    /// `online`, `offline` or `revoked`.
    pub state: String,
    /// When it was last seen (now while online; when it went offline, or
    /// was revoked), unix ms; 0: never reported.
    pub last_seen_ms: u64,
    /// Its labels, as it last came online.
    pub labels: crate::proto::labels::Labels,
    /// Its agent's version, as it last came online.
    #[serde(default)]
    pub version: Option<String>,
    /// When its state last changed (came online, went offline), unix ms by
    /// its home relay's clock; 0: unknown.
    #[serde(default)]
    pub since_ms: u64,
}

/// One relay as HQ knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayView {
    /// The relay.
    pub relay: NodeName,
    /// Its parent (HQ's own name for a top-level relay).
    pub parent: NodeName,
    /// A session to its parent is up (as last reported).
    pub connected: bool,
    /// When its session last came up or went down, unix ms.
    pub last_seen_ms: u64,
    /// `connected`; `reconnecting` (down, within the grace period after it
    /// or HQ restarted); `unreachable` (up, but a relay above it is down);
    /// `disconnected`. Never a loss of data: its results wait in its outbox.
    #[serde(default)]
    pub state: String,
    /// Clients whose home it is.
    pub clients: u64,
    /// Of those, online (as the relay last reported).
    #[serde(default)]
    pub online: u64,
    /// Of those, offline.
    #[serde(default)]
    pub offline: u64,
}

/// The tree as HQ knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeView {
    /// HQ's name.
    pub hq: NodeName,
    /// Every relay.
    pub relays: Vec<RelayView>,
    /// Total clients.
    pub clients: u64,
    /// Of those, online.
    #[serde(default)]
    pub online: u64,
}

/// `hq token create --json`: the token (shown once; HQ keeps only its hash),
/// the CA's hash to pin, and when the token expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The secret to give `enroll --token`.
    pub token: String,
    /// `sha256:HEX` of the CA certificate (DER), for `enroll --ca-hash`.
    pub ca_hash: String,
    /// Unix ms after which the token is refused.
    pub expires_ms: u64,
}
