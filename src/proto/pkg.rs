//! Package traffic on the wire: install and remove actions, blob transfer
//! (chunks and manifests, by their blake3 address), relay cache syncs and
//! their reports, and a client's inventory.
//!
//! Uses only [`crate::pkg::ChunkHash`] of the package library (a leaf module
//! like this one); nothing here does I/O.

use super::ids::NodeName;
use crate::pkg::ChunkHash;
use serde::{Deserialize, Serialize};

/// Install a package on each leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSpec {
    /// Package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest's address: signed by HQ with the order, so every byte the
    /// agent unpacks is checked against HQ's word, whatever relays serve.
    pub manifest: ChunkHash,
    /// Total file bytes (informational; the agent checks the manifest).
    pub size: u64,
    /// Kill the install command after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Remove an installed package on each leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSpec {
    /// Package name.
    pub name: String,
    /// Kill the remove command after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// One package version, as named in syncs and reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRef {
    /// Package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The manifest's address.
    pub manifest: ChunkHash,
}

/// HQ to one relay (routed down the tree): bring these packages into your cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncOrder {
    /// HQ's id of this sync request.
    pub id: u64,
    /// The relay that is to sync.
    pub relay: NodeName,
    /// The packages.
    pub packages: Vec<PackageRef>,
    /// Re-verify and re-fetch everything, not only what is missing.
    pub complete: bool,
}

/// Where a relay's copy of one package stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// Being fetched.
    Syncing,
    /// Every chunk is in the cache.
    Present,
    /// The last sync failed (see the reason).
    Failed,
}

impl CacheState {
    /// Lowercase name as in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Syncing => "syncing",
            CacheState::Present => "present",
            CacheState::Failed => "failed",
        }
    }
}

/// A relay reports a change in its cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// The relay.
    pub relay: NodeName,
    /// The package.
    pub package: PackageRef,
    /// Its state there.
    pub state: CacheState,
    /// Why it failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// The sync request this answers, if any (on-demand fetches have none).
    #[serde(default)]
    pub sync_id: Option<u64>,
    /// Bytes this relay received from its parent for this package in this sync.
    #[serde(default)]
    pub fetched_bytes: u64,
    /// When, unix ms.
    pub at_ms: u64,
}

/// A package installed on a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// Package name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its manifest's address.
    pub manifest: ChunkHash,
    /// When it was installed, unix ms.
    pub at_ms: u64,
}

/// A client's inventory, reported after each install or remove.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReport {
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// Every package installed now.
    pub packages: Vec<Installed>,
    /// When, unix ms.
    pub at_ms: u64,
}

/// What a connection is for, said in `Hello`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The long-lived session: assignments down, events up.
    #[default]
    Session,
    /// Fetching blobs (chunks, manifests) from the parent's store.
    Transfer,
}

/// A blob piece's size at most: frames stay well under every read limit.
pub const BLOB_PIECE: usize = 512 * 1024;
