//! The `--json` shapes of the depot: snapshots, audits, package versions and
//! relay caches. Data only: HQ fills them, the CLI shows them.

use crate::pkg::ChunkHash;
use crate::proto::ids::{JobId, NodeName};
use serde::{Deserialize, Serialize};

/// `hq snapshot create --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotView {
    /// The snapshot's name.
    pub snapshot: String,
    /// The master.
    pub client: NodeName,
    /// The snapshot job.
    pub job: JobId,
    /// Recorded at HQ (every chunk in the depot).
    pub done: bool,
    /// Objects recorded.
    pub objects: u64,
    /// Files recorded (content in the depot).
    pub files: u64,
}

/// An audit's totals per target state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTotals {
    /// Same as the master in every object compared.
    pub compliant: u64,
    /// Differs in at least one.
    pub non_compliant: u64,
    /// Could not be audited (refused path, unreadable file, expired...).
    pub error: u64,
    /// No result yet.
    pub pending: u64,
}

/// One audit's totals at one home relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRelayTotals {
    /// The relay.
    pub relay: NodeName,
    /// Its targets' totals.
    pub totals: AuditTotals,
}

/// One difference as `--json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DifferenceView {
    /// `package:NAME`, `file:/PATH` or `dpkg:NAME`.
    pub object: String,
    /// `missing`, `extra`, `version`, `content` or `mode`.
    pub kind: String,
    /// The master's value.
    pub master: Option<String>,
    /// The target's value.
    pub target: Option<String>,
}

/// One target of an audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditClient {
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// `compliant`, `non_compliant`, `error` or `pending`.
    pub state: String,
    /// Its differences (non-compliant only).
    pub differences: Vec<DifferenceView>,
    /// Why it is in error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `hq audit status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatusView {
    /// The audit's id (its job).
    pub audit: JobId,
    /// `CLIENT` or `snapshot:NAME`.
    pub master: String,
    /// Every target has a result.
    pub done: bool,
    /// Targets per state.
    pub totals: AuditTotals,
    /// Per home relay.
    pub relays: Vec<AuditRelayTotals>,
    /// Every target.
    pub clients: Vec<AuditClient>,
}

/// A package version in the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The manifest's address (hex in JSON).
    pub manifest: ChunkHash,
    /// Files.
    pub files: u64,
    /// File bytes in all.
    pub size: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Install command (`/bin/sh -c`, in the unpacked tree).
    pub install: Option<String>,
    /// Remove command.
    pub remove: Option<String>,
    /// When it was added, unix ms.
    pub added_ms: u64,
    /// Bytes the depot stored new for it (what was not already there).
    pub new_bytes: u64,
    /// Entries (paths and kinds), for `package show`.
    #[serde(default)]
    pub entries: Vec<String>,
    /// A bundle (`package add --bundle`): left out of syncs unless asked.
    #[serde(default)]
    pub bundle: bool,
}

/// A relay's sync schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaySchedule {
    /// The relay.
    pub relay: NodeName,
    /// The schedule, as text.
    pub spec: Option<String>,
    /// Stagger window, ms.
    pub stagger_ms: u64,
    /// The next sync, unix ms.
    pub next_ms: Option<u64>,
    /// The last scheduled sync, unix ms.
    pub last_ms: Option<u64>,
}

/// One package at one relay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayPackage {
    /// Package name.
    pub name: String,
    /// The newest version in the depot.
    pub newest: String,
    /// The newest version present in the relay's cache, if any.
    pub present: Option<String>,
    /// `present`, `outdated`, `missing`, `syncing` or `failed`.
    pub state: String,
    /// Why the last sync failed.
    pub reason: Option<String>,
    /// The relay's last report for this package, unix ms.
    pub at_ms: Option<u64>,
}

/// One relay's cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCache {
    /// The relay.
    pub relay: NodeName,
    /// Its schedule.
    pub schedule: RelaySchedule,
    /// When its last sync finished, unix ms.
    pub last_sync_ms: Option<u64>,
    /// Each package.
    pub packages: Vec<RelayPackage>,
    /// Bytes of blobs it reported fetching from its parent, in all.
    pub fetched_bytes: u64,
}

/// Every relay's cache, and what HQ sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageStatusView {
    /// Per relay.
    pub relays: Vec<RelayCache>,
    /// Bytes of blobs HQ sent to each directly connected relay since HQ started.
    pub hq_egress: Vec<(NodeName, u64)>,
}
