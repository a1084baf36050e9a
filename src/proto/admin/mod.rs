//! Admin requests to HQ and their answers; the answers are also the `--json`
//! output of the `hq` commands, so their field names are part of the contract.

use super::ids::{JobId, NodeName};
use super::msg::{Action, LeafState};
use super::pkg::PackageRef;
use crate::pkg::ChunkHash;
use serde::{Deserialize, Serialize};

mod depot;
mod fleet;
mod jobs;

pub use depot::*;
pub use fleet::*;
pub use jobs::*;

/// What an admin asks of HQ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
// One request per admin frame: the size of `CreateJob` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AdminRequest {
    /// Create a job for all lower clients of `dest`.
    CreateJob {
        /// Relays whose lower clients are targeted.
        dest: Vec<NodeName>,
        /// What to do.
        action: Action,
        /// Leaves not delivered within this many milliseconds expire.
        expires_ms: Option<u64>,
        /// How it rolls out (`--batch`, `--canary`, `--max-failures`,
        /// `--at`, `--window`); the default starts every leaf at once.
        #[serde(default)]
        policy: super::rollout::PolicyRequest,
        /// `--dest clients`: exactly these clients, wherever they live now
        /// (then `dest` is empty).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        clients: Vec<NodeName>,
        /// Labels every target must carry, clients left out.
        #[serde(default, skip_serializing_if = "super::labels::TargetFilter::is_empty")]
        filter: super::labels::TargetFilter,
    },
    /// Pause a job: no new leaf starts anywhere until it is resumed.
    Pause {
        /// The job.
        job: JobId,
    },
    /// Resume a paused job (failures are counted afresh from here).
    Resume {
        /// The job.
        job: JobId,
    },
    /// Every recurring job's schedule.
    Repeats,
    /// Removes a recurring job's schedule (its jobs stay).
    Unschedule {
        /// The schedule's id.
        schedule: u64,
    },
    /// One job in full.
    Status {
        /// The job.
        job: JobId,
        /// Only leaves in these states (none: every state).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        states: Vec<LeafState>,
        /// Only leaves whose home is this relay.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay: Option<NodeName>,
        /// At most this many leaves of each state (none: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Paging: at most this many leaves in `clients` (none: all), in
        /// client order; the answer's `next` names where the next page starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page: Option<u64>,
        /// Paging: only leaves of clients after this one (the previous
        /// page's `next`). Such a page answers only `clients` and `next`:
        /// totals, per relay and `matched` come with the first page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<NodeName>,
    },
    /// A job's counts by state, in all and per relay, from HQ's memory:
    /// cheap to ask again and again (`job wait --progress`). Answered once
    /// something changed, or after `wait_ms`, whichever comes first.
    Progress {
        /// The job.
        job: JobId,
        /// Wait this long for a change before answering (0: answer now).
        #[serde(default)]
        wait_ms: u64,
    },
    /// One leaf's latest output: stdout and stderr apart, exit code, timings.
    Output {
        /// The job.
        job: JobId,
        /// The client.
        client: NodeName,
    },
    /// Every job in brief.
    List,
    /// A new attempt for the failed and timed-out leaves.
    Rerun {
        /// The job.
        job: JobId,
        /// Also the leaves that expired (`--expired`).
        #[serde(default)]
        expired: bool,
    },
    /// Cancel a job: no leaf starts any more, running commands are stopped,
    /// every leaf not yet final becomes `canceled`.
    Cancel {
        /// The job.
        job: JobId,
    },
    /// Remove finished jobs older than this from HQ, relays and agents.
    Purge {
        /// Age in milliseconds (from the job's creation).
        older_than_ms: u64,
    },
    /// Answer when every leaf of the latest attempt is final, or at the timeout.
    Wait {
        /// The job.
        job: JobId,
        /// Give up after this many milliseconds.
        timeout_ms: u64,
    },
    /// Relays, their parents and clients.
    Tree,
    /// Make an enrollment token (`hq token create`).
    TokenCreate {
        /// The role a node enrolling with it gets (agent or relay).
        role: super::ids::Role,
        /// Valid this long, in milliseconds.
        ttl_ms: u64,
        /// Enrollments it allows.
        uses: u32,
    },
    /// Revoke a node: refused everywhere from now on.
    Revoke {
        /// The node.
        name: NodeName,
        /// Revoke even a name HQ has never seen (an identity issued but
        /// never used); without it such a name is refused as a likely typo.
        #[serde(default)]
        force: bool,
    },
    /// Which of these blobs the depot lacks (before an upload).
    PackageMissing {
        /// Blob addresses.
        hashes: Vec<ChunkHash>,
    },
    /// A piece of a blob for the depot (pieces of one blob in order).
    PackageUpload {
        /// The blob's address.
        hash: ChunkHash,
        /// Where this piece starts.
        offset: u64,
        /// The blob's whole size.
        total: u64,
        /// The piece.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Adds the package whose manifest (and every chunk) was uploaded.
    PackageAdd {
        /// The manifest's address.
        manifest: ChunkHash,
        /// A bundle (service-pack-like): left out of syncs unless
        /// `--include-bundles`.
        #[serde(default)]
        bundle: bool,
    },
    /// Every package version in the depot.
    PackageList,
    /// One package version (the newest when `version` is `None`).
    PackageShow {
        /// Package name.
        name: String,
        /// Its version.
        version: Option<String>,
    },
    /// Sync relay caches now.
    PackageSync {
        /// The relays.
        relays: Vec<NodeName>,
        /// One package (`None`: the newest version of every package).
        name: Option<String>,
        /// Its version (`None`: the newest).
        version: Option<String>,
        /// Re-verify and re-fetch everything.
        complete: bool,
    },
    /// Per relay: which packages are present, missing, outdated or syncing.
    PackageStatus {
        /// Only this relay.
        relay: Option<NodeName>,
    },
    /// Sets (or clears) a relay's sync schedule.
    PackageSchedule {
        /// The relay.
        relay: NodeName,
        /// The schedule's text (`None` clears it).
        spec: Option<String>,
        /// Spread relays' pulls over this many milliseconds.
        stagger_ms: u64,
    },
    /// One client: its home relay and installed packages.
    ClientShow {
        /// The client.
        name: NodeName,
    },
    /// Every client (`hq client list`), narrowed.
    ClientList {
        /// Only clients whose home is this relay.
        #[serde(default)]
        relay: Option<NodeName>,
        /// Only clients carrying every one of these labels.
        #[serde(default)]
        labels: super::labels::Labels,
        /// Only clients in this state: `online`, `offline` or `revoked`.
        #[serde(default)]
        state: Option<String>,
    },
    /// A one-time dashboard login URL (`hq web login`).
    WebLogin,
    /// `hq snapshot create`: a snapshot job to `client` (at its home relay);
    /// answers once it is final or after `wait_ms`.
    SnapshotCreate {
        /// The master.
        client: NodeName,
        /// The snapshot's name.
        name: String,
        /// What to record.
        select: super::audit::Selection,
        /// Leaves not delivered within this many milliseconds expire.
        #[serde(default)]
        expires_ms: Option<u64>,
        /// Answer after this long even if the snapshot is not final.
        wait_ms: u64,
    },
    /// `hq audit create`: an audit job against a snapshot (taken first from a
    /// live master).
    AuditCreate {
        /// `Client` for a live master, else the snapshot's name.
        master: AuditMaster,
        /// Relays whose lower clients are audited.
        dest: Vec<NodeName>,
        /// File globs (`None`: the snapshot's).
        #[serde(default)]
        files: Option<Vec<String>>,
        /// Leave relaytree packages out.
        #[serde(default)]
        no_packages: bool,
        /// Compare Debian packages too.
        #[serde(default)]
        dpkg: bool,
        /// Leaves not delivered within this many milliseconds expire.
        #[serde(default)]
        expires_ms: Option<u64>,
        /// How long a live master's snapshot may take.
        wait_ms: u64,
    },
    /// `hq audit status`.
    AuditStatus {
        /// The audit (its job).
        audit: JobId,
    },
    /// `hq sync`: plan the changes that bring an audit's targets in line and
    /// launch them as one batch.
    Sync(super::sync::SyncRequest),
}

/// What an audit compares with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditMaster {
    /// A live client: snapshot it first.
    Client(NodeName),
    /// A snapshot taken earlier.
    Snapshot(String),
}

/// HQ's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminResponse {
    /// A job was created.
    Created {
        /// Its id.
        job: JobId,
    },
    /// A job's status.
    Status(JobStatus),
    /// All jobs.
    List(Vec<JobSummary>),
    /// A rerun was made.
    Rerun(RerunResult),
    /// The tree.
    Tree(TreeView),
    /// An enrollment token was made.
    Token(TokenCreated),
    /// The deny list after a revocation.
    Revoked {
        /// Every revoked name.
        denied: Vec<NodeName>,
    },
    /// Blobs the depot lacks.
    Missing {
        /// Their addresses.
        hashes: Vec<ChunkHash>,
    },
    /// A piece was taken.
    Uploaded {
        /// The whole blob is now stored.
        complete: bool,
    },
    /// One package version.
    Package(PackageInfo),
    /// Every package version.
    Packages(Vec<PackageInfo>),
    /// A sync was ordered.
    SyncOrdered {
        /// Its id.
        id: u64,
        /// The relays.
        relays: Vec<NodeName>,
        /// The packages.
        packages: Vec<PackageRef>,
    },
    /// Relay caches.
    PackageStatus(PackageStatusView),
    /// A schedule was set or cleared.
    Scheduled(RelaySchedule),
    /// One client.
    Client(ClientView),
    /// Clients (`hq client list`).
    Clients(Vec<ClientEntry>),
    /// A job was canceled.
    Canceled(CancelResult),
    /// A job was paused or resumed.
    Control(ControlResult),
    /// A recurring job was scheduled.
    Repeating(RepeatView),
    /// Every recurring job.
    Repeats(Vec<RepeatView>),
    /// A recurring job's schedule was removed (as it was last).
    Unscheduled(RepeatView),
    /// Jobs were purged.
    Purged(PurgeResult),
    /// A job's counts.
    Progress(JobProgress),
    /// One leaf's output.
    Output(LeafOutputView),
    /// A one-time dashboard login URL.
    WebLogin {
        /// Open it in a browser once; it expires soon and works only once.
        url: String,
    },
    /// A snapshot was taken (or is still being taken: see `done`).
    Snapshot(SnapshotView),
    /// An audit was launched.
    AuditCreated {
        /// The audit's id (its job).
        audit: JobId,
        /// The snapshot it compares with.
        snapshot: String,
    },
    /// An audit's results.
    AuditStatus(AuditStatusView),
    /// A sync's plan (and its batch, unless a dry run).
    Sync(super::sync::SyncView),
}
