//! The simulated bottom tier of `bench/million.sh`: plays bottom relays with
//! real relay certificates, each holding C virtual clients, so that the real
//! relays above it and HQ carry a tree of up to a million clients.
//!
//! Each simulated relay dials its parent (a real `relay`) through the
//! library's own dialer (TLS 1.3, mTLS, `Hello`, heartbeats), registers its
//! clients (`Event::ClientJoined`, as a real home relay reports agents),
//! acknowledges every message a child must acknowledge (placements, assigns,
//! forgets, cancels, pauses, purges), and answers each leaf it is given with
//! one `Leaf(Succeeded)`: what a real home relay sends up for a ping leaf.
//! Named in a destination itself, it reports its target set first
//! (`Event::Targets` in chunks, as `rules::plan_assignment` does).
//!
//! What it must not do: pretend to be more than a bench tool. It keeps its
//! outbox in memory (nothing is durable here), runs nothing (every action
//! is answered as a ping), checks no order or placement signature, and
//! sends no presence. It exists only so that HQ and every relay above it run
//! unchanged code on a tree bigger than this machine's sockets.
//!
//! `cargo run --release --example simtier -- --clients C IDENTITY_DIR=PARENT_ADDR...`
//! Clients are named `<relay>-<nnnnnn>` (1-based). Progress goes to stderr.

use relaytree::link::{self, Dialer, LinkError, Session, Timing};
use relaytree::proto::{
    now_ms, Attempt, Event, Hello, JobId, LeafState, LeafUpdate, Msg, NodeName, Role, Scope,
    PROTOCOL_VERSION,
};
use relaytree::rules::TARGETS_CHUNK;
use relaytree::tls::Identity;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Events per `Events` message at most, as the real outbox pump sends.
const BATCH: usize = link::BATCH;

/// One simulated relay: its clients and its in-memory outbox.
struct SimRelay {
    me: NodeName,
    clients: Vec<NodeName>,
    mine: HashSet<NodeName>,
    /// Unacknowledged events, oldest first, with their sequence numbers.
    outbox: VecDeque<(u64, Event)>,
    next_seq: u64,
    /// Assignments already answered (a re-sent one is only acknowledged).
    seen: HashSet<(JobId, Attempt)>,
    /// Leaves answered, over the process's life (for the log).
    answered: u64,
}

impl SimRelay {
    fn new(
        me: NodeName,
        count: usize,
    ) -> Result<SimRelay, Box<dyn std::error::Error + Send + Sync>> {
        let clients: Vec<NodeName> = (1..=count)
            .map(|i| NodeName::new(format!("{me}-{i:06}")))
            .collect::<Result<_, _>>()?;
        let mut s = SimRelay {
            mine: clients.iter().cloned().collect(),
            me,
            clients: Vec::new(),
            outbox: VecDeque::new(),
            next_seq: 1,
            seen: HashSet::new(),
            answered: 0,
        };
        let at_ms = now_ms();
        let joins: Vec<Event> = clients
            .iter()
            .map(|c| Event::ClientJoined {
                client: c.clone(),
                relay: s.me.clone(),
                at_ms,
            })
            .collect();
        s.push(joins);
        s.clients = clients;
        Ok(s)
    }

    fn push(&mut self, events: Vec<Event>) {
        for e in events {
            self.outbox.push_back((self.next_seq, e));
            self.next_seq += 1;
        }
    }

    /// The leaves an assignment gives this relay, and its target report
    /// when the relay is named in the destination.
    fn take(&mut self, job: JobId, attempt: Attempt, scope: &Scope) -> Vec<Event> {
        let (targets, named): (Vec<NodeName>, bool) = match scope {
            Scope::AllLowerOf(names) if names.contains(&self.me) => (self.clients.clone(), true),
            // Forwarded towards a relay below: there is none here.
            Scope::AllLowerOf(_) => (Vec::new(), false),
            Scope::Targets(list) => (
                list.iter()
                    .filter(|c| self.mine.contains(*c))
                    .cloned()
                    .collect(),
                false,
            ),
        };
        let mut events = Vec::with_capacity(targets.len() + 1);
        if named {
            let pairs: Vec<(NodeName, NodeName)> = targets
                .iter()
                .map(|c| (c.clone(), self.me.clone()))
                .collect();
            let chunks: Vec<_> = pairs.chunks(TARGETS_CHUNK).collect();
            let n = chunks.len().max(1);
            for i in 0..n {
                events.push(Event::Targets {
                    job,
                    attempt,
                    reporter: self.me.clone(),
                    leaves: chunks.get(i).map(|c| c.to_vec()).unwrap_or_default(),
                    last: i + 1 == n,
                });
            }
        }
        let at_ms = now_ms();
        for c in targets {
            events.push(Event::Leaf(LeafUpdate {
                job,
                attempt,
                client: c,
                relay: self.me.clone(),
                state: LeafState::Succeeded,
                exit_code: None,
                reason: None,
                output: None,
                at_ms,
                out: None,
                audit: None,
            }));
        }
        self.answered += events.len() as u64;
        events
    }
}

/// One session with the parent: re-send the unacknowledged outbox, then
/// answer the parent and pump, one batch in flight.
async fn session(sim: Arc<Mutex<SimRelay>>, s: Session) -> Result<(), LinkError> {
    let Session { tx, mut rx, .. } = s;
    let mut sim = sim.lock().await;
    let mut sent_upto = 0u64; // highest seq sent in this session
    let mut in_flight = false;
    loop {
        if !in_flight {
            let batch: Vec<(u64, Event)> = sim
                .outbox
                .iter()
                .filter(|(seq, _)| *seq > sent_upto)
                .take(BATCH)
                .cloned()
                .collect();
            if let Some((last, _)) = batch.last() {
                sent_upto = *last;
                in_flight = true;
                link::send(&tx, Msg::Events(batch)).await?;
            }
        }
        let reply = match rx.recv().await? {
            Msg::Ack { seq } => {
                while sim.outbox.front().is_some_and(|(s, _)| *s <= seq) {
                    sim.outbox.pop_front();
                }
                if seq >= sent_upto {
                    in_flight = false;
                }
                None
            }
            Msg::Assign(a) => {
                if sim.seen.insert((a.job, a.attempt)) {
                    let events = sim.take(a.job, a.attempt, &a.scope);
                    eprintln!(
                        "simtier {}: job {} attempt {}: {} event(s)",
                        sim.me,
                        a.job,
                        a.attempt,
                        events.len()
                    );
                    sim.push(events);
                }
                Some(Msg::AssignAck {
                    job: a.job,
                    attempt: a.attempt,
                })
            }
            Msg::Placement(sp) => match sp.placement() {
                Ok(p) => Some(Msg::PlacementAck { client: p.client }),
                Err(e) => return Err(LinkError::Protocol(format!("bad placement: {e}"))),
            },
            Msg::Forget { client, .. } => Some(Msg::ForgetAck { client }),
            Msg::Cancel { job } => Some(Msg::CancelAck { job }),
            Msg::Pause { job, seq, .. } => Some(Msg::PauseAck { job, seq }),
            Msg::Resume { job, seq } => Some(Msg::ResumeAck { job, seq }),
            Msg::Purge { id, .. } => Some(Msg::PurgeAck { id }),
            Msg::Deny { .. } | Msg::Sync(_) | Msg::CertReply { .. } => None,
            other => return Err(link::unexpected(&other, "from a parent")),
        };
        if let Some(m) = reply {
            link::send(&tx, m).await?;
        }
    }
}

/// Runs one simulated relay per `(identity dir, parent HOST:PORT)` in
/// `specs`, each with `clients` virtual clients, until `shutdown`. Errors
/// only at start (an identity that does not load or is not a relay's).
pub async fn run(
    clients: usize,
    specs: Vec<(std::path::PathBuf, String)>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut tasks = Vec::new();
    for (dir, addr) in specs {
        let identity =
            Identity::load(&dir).map_err(|e| format!("identity {}: {e}", dir.display()))?;
        let me = identity.me().clone();
        if me.role != Role::Relay {
            return Err(format!("{} holds no relay identity", dir.display()).into());
        }
        let dialer = Dialer {
            addr: addr.into(),
            connector: tokio_rustls::TlsConnector::from(
                identity.client_config_any(&[Role::Hq, Role::Relay], None)?,
            ),
            me: Hello {
                version: PROTOCOL_VERSION,
                name: me.name.clone(),
                role: Role::Relay,
                purpose: Default::default(),
                hq_now_ms: None,
                idle_timeout_ms: None,
                about: None,
            },
            timing: Timing {
                idle_timeout: Duration::from_secs(120),
                ..Timing::default()
            },
            gate: None,
        };
        let sim = Arc::new(Mutex::new(SimRelay::new(me.name.clone(), clients)?));
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            link::dial_loop(dialer, stop, |s| session(sim.clone(), s)).await
        }));
    }
    eprintln!("simtier: {} relay(s) of {clients} client(s)", tasks.len());
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

#[allow(dead_code)] // Included by tests/it/simtier.rs, which calls `run`.
fn usage() -> ! {
    eprintln!("usage: simtier --clients C IDENTITY_DIR=PARENT_ADDR...");
    std::process::exit(2)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let mut clients = None;
    let mut specs = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--clients" => clients = args.next().and_then(|v| v.parse::<usize>().ok()),
            _ => match a.split_once('=') {
                Some((dir, addr)) => specs.push((dir.into(), addr.to_string())),
                None => usage(),
            },
        }
    }
    let Some(clients) = clients else { usage() };
    if specs.is_empty() {
        usage();
    }
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        stop.cancel();
    });
    run(clients, specs, shutdown).await
}
