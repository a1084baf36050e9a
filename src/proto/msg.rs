//! Every message on the wire, one `enum`, encoded as named MessagePack.
//!
//! These types are the protocol's API: fields may be added (named encoding keeps
//! old peers decoding), never renamed. Nothing here does I/O.

use super::admin::{AdminRequest, AdminResponse};
use super::ids::{Attempt, JobId, NodeName, Role};
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// What a job does on each leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Answer at once without spawning a process.
    Ping,
    /// Run a command without a shell.
    Run(RunSpec),
    /// Fetch, verify, unpack and install a package.
    Install(super::pkg::InstallSpec),
    /// Remove an installed package.
    Remove(super::pkg::RemoveSpec),
    /// Compare the client with a master's objects; report only differences.
    Audit(super::audit::AuditSpec),
    /// Collect the client's objects and upload its files' content to HQ's
    /// depot (the master of an audit).
    Snapshot(super::audit::SnapshotSpec),
    /// Bring the client in line with an audit's master, then audit the
    /// synced objects again (`hq sync`).
    Sync(super::sync::SyncSpec),
    /// A job made of other jobs (HQ only; never sent down the tree).
    Batch(super::sync::BatchSpec),
}

/// A command to run on each leaf.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// Program and arguments; no shell.
    pub argv: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory on the client.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Kill the whole process group after this many milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// Which leaves an assignment covers, as seen by the relay receiving it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every client below each named relay, as known when that relay receives
    /// it; the named relays are in the receiver's subtree (or the receiver).
    AllLowerOf(Vec<NodeName>),
    /// Exactly these clients (a rerun, or a split of a snapshot).
    Targets(Vec<NodeName>),
}

/// One attempt of one job, travelling down one hop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// The attempt (1 for the original).
    pub attempt: Attempt,
    /// What to do.
    pub action: Action,
    /// Unix milliseconds after which an undelivered leaf is `expired`.
    pub expires_at_ms: Option<u64>,
    /// Which leaves.
    pub scope: Scope,
    /// HQ's signed orders covering this attempt, passed through unchanged:
    /// one for an original attempt, one per home relay for a rerun.
    #[serde(default)]
    pub orders: Vec<SignedOrder>,
    /// HQ's signed placement of the receiving agent (set by its home relay
    /// on the last hop only): what binds an original order to this agent.
    #[serde(default)]
    pub placement: Option<SignedPlacement>,
    /// The home relay's estimate of HQ's clock as it sends this to its
    /// agent, unix ms (last hop only): the agent judges the order's times by
    /// it, as by the `Hello`'s.
    #[serde(default)]
    pub hq_now_ms: Option<u64>,
    /// The job's rollout policy, for the relays to enforce (not sent to
    /// agents; absent: every leaf starts at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<super::rollout::Policy>,
}

/// What HQ orders for one attempt; signed by HQ so that no relay can alter,
/// widen or invent it. Agents run only what a valid order covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: Attempt,
    /// What to do.
    pub action: Action,
    /// Expiry of the attempt, unix ms.
    pub expires_at_ms: Option<u64>,
    /// When HQ made it, unix ms.
    pub issued_at_ms: u64,
    /// An original attempt: the destination relays (all their lower clients).
    #[serde(default)]
    pub dest: Vec<NodeName>,
    /// A rerun: the home relay whose leaves this order covers...
    #[serde(default)]
    pub relay: Option<NodeName>,
    /// ...and exactly which of them.
    #[serde(default)]
    pub targets: Option<Vec<NodeName>>,
    /// What narrows an original attempt's destinations (labels, exclusions):
    /// applied by the relay taking the snapshot, checked by each agent.
    #[serde(default, skip_serializing_if = "super::labels::TargetFilter::is_empty")]
    pub filter: super::labels::TargetFilter,
}

/// An [`Order`] as HQ encoded and signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedOrder {
    /// The order, MessagePack-encoded: the exact bytes signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// HQ's Ed25519 signature of `body`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
    /// Unsigned copy of `Order::relay`, so relays can pick without decoding.
    #[serde(default)]
    pub relay: Option<NodeName>,
}

impl Order {
    /// The exact bytes HQ signs (named MessagePack).
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }
}

impl SignedOrder {
    /// The order's filter, decoded but NOT verified (the relay taking a
    /// snapshot applies it; agents verify the signature and check it again).
    /// An undecodable body narrows nothing: the agents judge it.
    pub fn filter(&self) -> super::labels::TargetFilter {
        #[derive(Deserialize)]
        struct OnlyFilter {
            #[serde(default)]
            filter: super::labels::TargetFilter,
        }
        rmp_serde::from_slice::<OnlyFilter>(&self.body)
            .map(|o| o.filter)
            .unwrap_or_default()
    }
}

/// Where HQ placed an agent: its home relay, then each parent up to the relay
/// directly under HQ. Signed by HQ when it applies the agent's join, so that
/// an agent runs an original order only when one of the order's destinations
/// lies on its chain. A relay cannot make one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The agent.
    pub client: NodeName,
    /// Its home relay first, then each parent; HQ is not in it.
    pub chain: Vec<NodeName>,
    /// When HQ signed it, unix ms by HQ's clock; a newer one replaces an older.
    pub issued_at_ms: u64,
}

impl Placement {
    /// The exact bytes HQ signs (named MessagePack).
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    /// The relay after `relay` on the way down to the agent (the child of
    /// `relay` that the agent lives under), or `None` when `relay` is the
    /// agent's home or not on the chain at all.
    pub fn hop_below(&self, relay: &NodeName) -> Option<&NodeName> {
        let i = self.chain.iter().position(|r| r == relay)?;
        i.checked_sub(1).and_then(|j| self.chain.get(j))
    }
}

/// A [`Placement`] as HQ encoded and signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPlacement {
    /// The placement, MessagePack-encoded: the exact bytes signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// HQ's Ed25519 signature of `body`.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl SignedPlacement {
    /// The placement, decoded but NOT verified (relays route by it; agents
    /// verify `sig` first).
    pub fn placement(&self) -> Result<Placement, rmp_serde::decode::Error> {
        rmp_serde::from_slice(&self.body)
    }
}

/// A leaf's state; moves forward only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafState {
    /// Targeted, not yet acknowledged by the client.
    Pending,
    /// The client holds the assignment durably.
    Delivered,
    /// The client started it.
    Running,
    /// Exit code 0 (or ping answered).
    Succeeded,
    /// Non-zero exit, signal, spawn failure or interrupted.
    Failed,
    /// Killed at the timeout.
    TimedOut,
    /// Never reached before the job's expiry.
    Expired,
    /// Withdrawn.
    Canceled,
}

impl LeafState {
    /// Every state, in display order.
    pub const ALL: [LeafState; 8] = [
        LeafState::Pending,
        LeafState::Delivered,
        LeafState::Running,
        LeafState::Succeeded,
        LeafState::Failed,
        LeafState::TimedOut,
        LeafState::Expired,
        LeafState::Canceled,
    ];
    /// Progress rank: a state may only be replaced by one of higher rank.
    pub fn rank(self) -> u8 {
        match self {
            LeafState::Pending => 0,
            LeafState::Delivered => 1,
            LeafState::Running => 2,
            _ => 3,
        }
    }
    /// No further change within this attempt.
    pub fn is_final(self) -> bool {
        self.rank() == 3
    }
    /// A rerun of failed leaves targets this state.
    pub fn is_rerunnable(self) -> bool {
        matches!(self, LeafState::Failed | LeafState::TimedOut)
    }
    /// Lowercase name as in the JSON contract.
    pub fn as_str(self) -> &'static str {
        match self {
            LeafState::Pending => "pending",
            LeafState::Delivered => "delivered",
            LeafState::Running => "running",
            LeafState::Succeeded => "succeeded",
            LeafState::Failed => "failed",
            LeafState::TimedOut => "timed_out",
            LeafState::Expired => "expired",
            LeafState::Canceled => "canceled",
        }
    }
}

/// A leaf's state change, reported upward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafUpdate {
    /// The job.
    pub job: JobId,
    /// The attempt this state belongs to.
    pub attempt: Attempt,
    /// The client (leaf).
    pub client: NodeName,
    /// The client's home relay.
    pub relay: NodeName,
    /// The new state.
    pub state: LeafState,
    /// Exit code, when the command exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Why it failed, expired or was canceled.
    #[serde(default)]
    pub reason: Option<String>,
    /// Bounded tail of the command's output, stdout and stderr mixed (what
    /// peers before [`LeafOutput`] read; kept short).
    #[serde(default)]
    pub output: Option<String>,
    /// Unix milliseconds when the state was reached.
    pub at_ms: u64,
    /// A finished command's stdout and stderr apart, and its timings
    /// (absent from older agents, and from states other than final).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<LeafOutput>,
    /// An audit leaf's differences or a snapshot leaf's upload, with its
    /// final state (absent otherwise, and for a compliant client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<super::audit::AuditOutcome>,
}

/// What a command left: the tails of stdout and stderr, kept apart and
/// bounded ([`LeafOutput::TAIL_BYTES`] each), and when it ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafOutput {
    /// The end of its stdout (lossy UTF-8).
    #[serde(default)]
    pub stdout: String,
    /// The end of its stderr (lossy UTF-8).
    #[serde(default)]
    pub stderr: String,
    /// Bytes written to stdout in all (more than `stdout` holds when cut).
    #[serde(default)]
    pub stdout_bytes: u64,
    /// Bytes written to stderr in all.
    #[serde(default)]
    pub stderr_bytes: u64,
    /// When the process started, unix ms (the agent's clock).
    #[serde(default)]
    pub started_at_ms: u64,
    /// How long it ran, ms.
    #[serde(default)]
    pub duration_ms: u64,
}

impl LeafOutput {
    /// Bytes of each stream's tail an agent keeps and sends, at most: two of
    /// them and the short mixed tail stay far below an agent's frame
    /// (1 MiB) and an outbox batch (512 KiB).
    pub const TAIL_BYTES: usize = 64 * 1024;
}

/// Something a child reports upward through its persistent outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A leaf changed state.
    Leaf(LeafUpdate),
    /// The target set of an attempt, as snapshotted by `reporter` (in chunks;
    /// `last` marks the final chunk).
    Targets {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: Attempt,
        /// The relay named in the job's destination that took the snapshot.
        reporter: NodeName,
        /// (client, home relay) pairs.
        leaves: Vec<(NodeName, NodeName)>,
        /// This is the last chunk of the snapshot.
        last: bool,
    },
    /// An agent registered with `relay` as its home.
    ClientJoined {
        /// The agent.
        client: NodeName,
        /// Its home relay.
        relay: NodeName,
        /// When it registered there, unix ms by the home relay's clock (0
        /// from older peers: unknown). A join older than the one a
        /// directory holds is a stale re-send and changes nothing.
        #[serde(default)]
        at_ms: u64,
    },
    /// A relay connected to `parent`.
    RelayJoined {
        /// The relay.
        relay: NodeName,
        /// Its parent (a relay, or HQ's name).
        parent: NodeName,
    },
    /// A relay's cache changed.
    Cache(super::pkg::CacheReport),
    /// A client's packages after an install or remove.
    Inventory(super::pkg::InventoryReport),
    /// Home clients of `relay` came online or went offline (the latest
    /// change per client within a batch counts).
    Presence {
        /// The home relay reporting.
        relay: NodeName,
        /// The changes, in order.
        changes: Vec<super::labels::Presence>,
    },
    /// A relay's session to `parent` ended.
    RelayLeft {
        /// The relay.
        relay: NodeName,
        /// Its parent.
        parent: NodeName,
        /// When, unix ms.
        at_ms: u64,
    },
}

/// The first frame each way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Who the sender says it is; must match its certificate.
    pub name: NodeName,
    /// The sender's role; must match its certificate.
    pub role: Role,
    /// What the connection is for (a session unless said otherwise).
    #[serde(default)]
    pub purpose: super::pkg::Purpose,
    /// A parent's estimate of HQ's clock as it sends this, unix ms: HQ's own
    /// clock, or a relay's plus the offset it measured from its parent's
    /// `Hello`. Children judge order times by it, not by their own clock.
    #[serde(default)]
    pub hq_now_ms: Option<u64>,
    /// What an agent says about itself (labels, version); identity comes
    /// from the certificate, never from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<super::labels::About>,
    /// The sender's idle timeout, ms: the other side heartbeats often
    /// enough for it (absent: an older build, 20 s). Set by `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// A certificate signing request on its way to HQ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// The node the certificate is for.
    pub name: NodeName,
    /// Its role (agent or relay).
    pub role: Role,
    /// PKCS#10 request, PEM, for `spiffe://<trust-domain>/<role>/<name>`.
    pub csr_pem: String,
    /// The enrollment token; `None` for a renewal (the requester is then the
    /// verified peer of the session it came on).
    #[serde(default)]
    pub token: Option<String>,
}

/// What HQ sends back: the certificate and what a node needs beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertGrant {
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// HQ's public job-signing key (`sign.pub`, raw bytes).
    #[serde(with = "serde_bytes")]
    pub sign_pub: Vec<u8>,
}

/// Every message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msg {
    /// Session opening, both ways.
    Hello(Hello),
    /// Keeps an idle session alive, both ways.
    Heartbeat,
    /// Parent to child: an attempt to carry out.
    Assign(Assignment),
    /// Child to parent: the assignment is durably held.
    AssignAck {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: Attempt,
    },
    /// Parent to child: `client` registered elsewhere (under `moved_to`);
    /// drop it from this subtree's directory.
    Forget {
        /// The client that moved.
        client: NodeName,
        /// Its new home relay.
        moved_to: NodeName,
    },
    /// Child to parent: the `Forget` is durably applied.
    ForgetAck {
        /// The client.
        client: NodeName,
    },
    /// Parent to child relay: the full list of revoked nodes, to refuse
    /// everywhere below.
    Deny {
        /// Every revoked name.
        names: Vec<NodeName>,
    },
    /// Child to parent: outbox entries, each with its sequence number.
    Events(Vec<(u64, Event)>),
    /// Parent to child: every event up to `seq` is durably stored.
    Ack {
        /// Highest sequence number persisted.
        seq: u64,
    },
    /// Admin to HQ.
    AdminReq {
        /// Correlates the response.
        id: u64,
        /// The request.
        req: AdminRequest,
    },
    /// HQ to admin.
    AdminResp {
        /// The request's id.
        id: u64,
        /// The answer, or an error text.
        resp: Result<AdminResponse, String>,
    },
    /// Parent to child relay: a cache sync, for `relay` or to route towards it.
    Sync(super::pkg::SyncOrder),
    /// Child to parent on a transfer connection: send these blobs.
    GetBlobs {
        /// Their addresses.
        hashes: Vec<crate::pkg::ChunkHash>,
    },
    /// Parent to child on a transfer connection: a piece of a blob.
    Blob {
        /// The blob's address.
        hash: crate::pkg::ChunkHash,
        /// Where this piece starts.
        offset: u64,
        /// The blob's whole size.
        total: u64,
        /// The piece.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Parent to child on a transfer connection: a requested blob cannot be had.
    BlobMissing {
        /// The blob's address.
        hash: crate::pkg::ChunkHash,
        /// Why.
        reason: String,
    },
    /// Parent to child on a transfer connection: every blob asked for was sent.
    BlobsDone,
    /// Child to parent on a transfer connection (an upload): which of these
    /// blobs does HQ's depot lack? Answered by [`Msg::PutLacking`]; then the
    /// child sends those as `Blob` pieces and `BlobsDone`, and the parent
    /// answers [`Msg::PutAck`] once they are stored at HQ.
    PutQuery {
        /// Their addresses.
        hashes: Vec<crate::pkg::ChunkHash>,
    },
    /// Parent to child on a transfer connection: the blobs HQ's depot lacks.
    PutLacking {
        /// Their addresses.
        hashes: Vec<crate::pkg::ChunkHash>,
    },
    /// Parent to child on a transfer connection: these uploaded blobs are
    /// stored in HQ's depot.
    PutAck {
        /// Their addresses.
        hashes: Vec<crate::pkg::ChunkHash>,
    },
    /// Parent to child: job `job` is canceled. Start none of its leaves;
    /// stop running commands (SIGTERM, a grace, SIGKILL); every leaf not yet
    /// final becomes `canceled`. Queued until [`Msg::CancelAck`].
    Cancel {
        /// The job.
        job: JobId,
    },
    /// Child to parent: the cancel of `job` is durably applied.
    CancelAck {
        /// The job.
        job: JobId,
    },
    /// Parent to child relay: start no more leaves of `job` (by hand, the
    /// circuit breaker or a failed canary). Queued until [`Msg::PauseAck`];
    /// `seq` (HQ's, increasing) orders it against a `Resume`: a relay
    /// ignores a control older than the last one it applied.
    Pause {
        /// The job.
        job: JobId,
        /// HQ's sequence number of this control.
        seq: u64,
        /// Why, for status.
        reason: String,
    },
    /// Child to parent: the pause `seq` of `job` is durably applied.
    PauseAck {
        /// The job.
        job: JobId,
        /// The pause.
        seq: u64,
    },
    /// Parent to child relay: `job` runs again (also: its canaries all
    /// succeeded); failures are counted afresh from here. Queued until
    /// [`Msg::ResumeAck`].
    Resume {
        /// The job.
        job: JobId,
        /// HQ's sequence number of this control.
        seq: u64,
    },
    /// Child to parent: the resume `seq` of `job` is durably applied.
    ResumeAck {
        /// The job.
        job: JobId,
        /// The resume.
        seq: u64,
    },
    /// Relay to a home agent: the job of this attempt is paused here (by
    /// HQ or by the relay's own failures). If the attempt has not started,
    /// do not start it: forget it and give it back. Answered by
    /// [`Msg::Recalled`]; best effort (not queued): a recall lost with its
    /// session leaves the attempt to run as delivered.
    Recall {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: Attempt,
    },
    /// Home agent to relay: the answer to [`Msg::Recall`]. `given_back`:
    /// the attempt never started here and is forgotten (durably), so the
    /// relay holds it as pending again and may deliver it once more;
    /// otherwise it started (or ended) and its results follow as usual.
    Recalled {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: Attempt,
        /// Not started here, and forgotten.
        given_back: bool,
    },
    /// Parent to child: forget everything about these jobs (retention).
    /// Queued until [`Msg::PurgeAck`] with the same id.
    Purge {
        /// Identifies this purge for its acknowledgement.
        id: u64,
        /// The jobs to remove.
        jobs: Vec<JobId>,
    },
    /// Child to parent: the purge `id` is durably applied.
    PurgeAck {
        /// The purge.
        id: u64,
    },
    /// A certificate wanted: an enrollment (anonymous, the only message of
    /// its connection, `req.token` set) or a renewal (on a node's session),
    /// passed up the tree to HQ; answered by [`Msg::CertReply`] with the same id.
    CertRequest {
        /// Matches the answer to the question, per connection.
        id: u64,
        /// What is asked.
        req: CertRequest,
    },
    /// The answer to [`Msg::CertRequest`] `id`.
    CertReply {
        /// The request.
        id: u64,
        /// The certificate, or why not.
        result: Result<CertGrant, String>,
    },
    /// Parent to child relay: HQ's placement of an agent, to keep when the
    /// agent's home is the receiver, else to pass on towards it. Queued
    /// until [`Msg::PlacementAck`].
    Placement(SignedPlacement),
    /// Child to parent: the placement of `client` is durably kept or queued.
    PlacementAck {
        /// The agent.
        client: NodeName,
    },
    /// A peer explains why it is closing the session.
    Bye {
        /// Why.
        reason: String,
    },
}

impl Msg {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "hello",
            Msg::CertRequest { .. } => "cert_request",
            Msg::CertReply { .. } => "cert_reply",
            Msg::Heartbeat => "heartbeat",
            Msg::Assign(_) => "assign",
            Msg::AssignAck { .. } => "assign_ack",
            Msg::Forget { .. } => "forget",
            Msg::ForgetAck { .. } => "forget_ack",
            Msg::Deny { .. } => "deny",
            Msg::Events(_) => "events",
            Msg::Ack { .. } => "ack",
            Msg::AdminReq { .. } => "admin_req",
            Msg::AdminResp { .. } => "admin_resp",
            Msg::Sync(_) => "sync",
            Msg::GetBlobs { .. } => "get_blobs",
            Msg::Blob { .. } => "blob",
            Msg::BlobMissing { .. } => "blob_missing",
            Msg::BlobsDone => "blobs_done",
            Msg::PutQuery { .. } => "put_query",
            Msg::PutLacking { .. } => "put_lacking",
            Msg::PutAck { .. } => "put_ack",
            Msg::Cancel { .. } => "cancel",
            Msg::CancelAck { .. } => "cancel_ack",
            Msg::Pause { .. } => "pause",
            Msg::PauseAck { .. } => "pause_ack",
            Msg::Resume { .. } => "resume",
            Msg::ResumeAck { .. } => "resume_ack",
            Msg::Recall { .. } => "recall",
            Msg::Recalled { .. } => "recalled",
            Msg::Purge { .. } => "purge",
            Msg::PurgeAck { .. } => "purge_ack",
            Msg::Placement(_) => "placement",
            Msg::PlacementAck { .. } => "placement_ack",
            Msg::Bye { .. } => "bye",
        }
    }
}

/// Current time in unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
