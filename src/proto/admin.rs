//! Admin requests to HQ and their answers; the answers are also the `--json`
//! output of the `hq` commands, so their field names are part of the contract.

use super::ids::{Attempt, JobId, NodeName};
use super::msg::{Action, LeafState};
use super::pkg::{Installed, PackageRef};
use crate::pkg::ChunkHash;
use serde::{Deserialize, Serialize};

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

/// A job's counts, for a progress line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The job.
    pub job: JobId,
    /// Its latest attempt.
    pub attempt: Attempt,
    /// As in [`JobStatus::done`].
    pub done: bool,
    /// Leaves by state.
    pub totals: Totals,
    /// Per home relay.
    pub relays: Vec<RelayTotals>,
    /// Destination relays that have not reported their targets yet.
    pub awaiting: Vec<NodeName>,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// As in [`JobStatus::state`] (empty from an HQ that predates it).
    #[serde(default)]
    pub state: String,
    /// As in [`JobStatus::pause_reason`].
    #[serde(default)]
    pub pause_reason: Option<String>,
}

/// `hq job output JOB CLIENT --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafOutputView {
    /// The job.
    pub job: JobId,
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// The attempt this output is from: the latest that finished (or the
    /// leaf's current one when none has).
    pub attempt: Attempt,
    /// How that attempt ended (or the leaf's state while none has).
    pub state: LeafState,
    /// Its exit code.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out, expired or was canceled.
    pub reason: Option<String>,
    /// The end of its stdout (at most 64 KiB).
    pub stdout: String,
    /// The end of its stderr (at most 64 KiB).
    pub stderr: String,
    /// Bytes it wrote to stdout in all (more than `stdout` when cut).
    pub stdout_bytes: u64,
    /// Bytes it wrote to stderr in all.
    pub stderr_bytes: u64,
    /// Stdout and stderr mixed, from an agent too old to keep them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// When the process started, unix ms (the agent's clock).
    pub started_at_ms: Option<u64>,
    /// When the attempt finished, unix ms.
    pub finished_at_ms: Option<u64>,
    /// How long the process ran, ms.
    pub duration_ms: Option<u64>,
    /// The leaf's attempt now (a rerun may be under way).
    pub latest_attempt: Attempt,
    /// The leaf's state now.
    pub latest_state: LeafState,
}

/// What `hq job cancel` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResult {
    /// The job.
    pub job: JobId,
    /// Leaves that were not final and are now `canceled` (or will be, once
    /// their relay hears of it).
    pub canceled: u64,
}

/// What `hq job purge` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResult {
    /// Jobs removed.
    pub jobs: Vec<JobId>,
    /// Their leaves removed at HQ.
    pub leaves: u64,
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
    pub labels: super::labels::Labels,
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
    pub labels: super::labels::Labels,
    /// Its agent's version, as it last came online.
    #[serde(default)]
    pub version: Option<String>,
    /// When its state last changed (came online, went offline), unix ms by
    /// its home relay's clock; 0: unknown.
    #[serde(default)]
    pub since_ms: u64,
}

/// Leaves counted by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Not yet acknowledged by the client.
    pub pending: u64,
    /// Held by the client.
    pub delivered: u64,
    /// Started.
    pub running: u64,
    /// Finished with success.
    pub succeeded: u64,
    /// Finished with failure.
    pub failed: u64,
    /// Killed at the timeout.
    pub timed_out: u64,
    /// Never delivered before expiry.
    pub expired: u64,
    /// Withdrawn.
    pub canceled: u64,
}

impl Totals {
    /// Counts one more leaf in `state`.
    pub fn add(&mut self, state: LeafState) {
        *self.slot(state) += 1;
    }
    /// Counts one leaf fewer in `state`.
    pub fn remove(&mut self, state: LeafState) {
        let slot = self.slot(state);
        *slot = slot.saturating_sub(1);
    }
    /// The count for `state`.
    pub fn get(&self, state: LeafState) -> u64 {
        let mut t = self.clone();
        *t.slot(state)
    }
    fn slot(&mut self, state: LeafState) -> &mut u64 {
        match state {
            LeafState::Pending => &mut self.pending,
            LeafState::Delivered => &mut self.delivered,
            LeafState::Running => &mut self.running,
            LeafState::Succeeded => &mut self.succeeded,
            LeafState::Failed => &mut self.failed,
            LeafState::TimedOut => &mut self.timed_out,
            LeafState::Expired => &mut self.expired,
            LeafState::Canceled => &mut self.canceled,
        }
    }
    /// All leaves.
    pub fn total(&self) -> u64 {
        LeafState::ALL.iter().map(|s| self.get(*s)).sum()
    }
    /// Leaves not yet final.
    pub fn open(&self) -> u64 {
        self.pending + self.delivered + self.running
    }
    /// Adds another set of counts (a batch's children).
    pub fn merge(&mut self, other: &Totals) {
        for s in LeafState::ALL {
            *self.slot(s) += other.get(s);
        }
    }
}

/// One relay's share of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayTotals {
    /// The home relay.
    pub relay: NodeName,
    /// Its leaves by state.
    pub totals: Totals,
}

/// One leaf's latest result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The client.
    pub client: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// The attempt that produced this result.
    pub attempt: Attempt,
    /// Its state.
    pub state: LeafState,
    /// Exit code, if the command exited.
    pub exit_code: Option<i32>,
    /// Why it failed, expired or was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Tail of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The child job this leaf belongs to (a batch's status only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
}

/// A recurring job: `hq job create --repeat ... --json`, and `hq job list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatView {
    /// Its id.
    pub schedule: u64,
    /// The schedule, canonical (`monthly 2nd tue +4d 02:30`).
    pub spec: String,
    /// The next run, unix ms (none: never again).
    pub next_ms: Option<u64>,
    /// Its latest occurrences, oldest first.
    pub jobs: Vec<JobId>,
}

/// The schedule a job is an occurrence of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepeatLink {
    /// The schedule's id.
    pub schedule: u64,
    /// Its text.
    pub spec: String,
    /// Its next run, unix ms.
    pub next_ms: Option<u64>,
}

/// `hq job pause|resume --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResult {
    /// The job.
    pub job: JobId,
    /// Its state now: `paused` or `active`.
    pub state: String,
    /// Why it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: JobId,
    /// Its latest attempt.
    pub attempt: Attempt,
    /// Every leaf of the latest attempt is final and every destination relay
    /// has reported its targets, or the job was canceled.
    pub done: bool,
    /// `active`, `paused`, `canceled` or `done` (a canceled job is done as
    /// well).
    #[serde(default)]
    pub state: String,
    /// Why the job is paused (by the operator, the failure threshold, a
    /// canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<String>,
    /// Its rollout policy, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<super::rollout::Policy>,
    /// Leaves by their latest result.
    pub totals: Totals,
    /// Per home relay.
    pub relays: Vec<RelayTotals>,
    /// Each leaf once.
    pub clients: Vec<ClientStatus>,
    /// What it does, for display.
    pub action: String,
    /// Destination relays.
    pub dest: Vec<NodeName>,
    /// Destination relays that have not yet reported the attempt's targets.
    pub awaiting: Vec<NodeName>,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
    /// Expiry, unix ms.
    pub expires_at_ms: Option<u64>,
    /// When the latest leaf change happened, unix ms (the end, once done).
    #[serde(default)]
    pub last_change_ms: u64,
    /// Leaves matching the request's filters (`clients` may hold fewer: the
    /// limit per state).
    #[serde(default)]
    pub matched: u64,
    /// Paging: `clients` stopped at a page's end; ask again with `after`
    /// set to this client for the rest (never in `job status --json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NodeName>,
    /// A batch's child jobs, each in brief (empty for other jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobSummary>,
}

/// A job in brief.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    /// The job.
    pub job: JobId,
    /// Latest attempt.
    pub attempt: Attempt,
    /// As in [`JobStatus::done`].
    pub done: bool,
    /// As in [`JobStatus::state`].
    #[serde(default)]
    pub state: String,
    /// The recurring job it is an occurrence of, with its next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<RepeatLink>,
    /// What it does.
    pub action: String,
    /// Destination relays.
    pub dest: Vec<NodeName>,
    /// Leaves by latest result.
    pub totals: Totals,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// The result of `rerun --failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RerunResult {
    /// The job.
    pub job: JobId,
    /// The new attempt (unchanged when nothing failed).
    pub attempt: Attempt,
    /// How many leaves it targets.
    pub targets: u64,
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
