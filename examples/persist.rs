//! Durable leaf updates per second through a relay's store path: the same
//! writes `relay::home::apply_home` makes for a batch of updates from one
//! agent (read each leaf, queue the batch's events in the outbox in one push,
//! write the new states), acknowledged only after `Store::durable()` (group
//! commit). Many concurrent senders, as when thousands of agents report at
//! once; BATCH updates per sender per flush.
//!
//! With `--no-fsync`, the store skips its fsync after each flush (what
//! `Store::durable` did before it fsynced; survives a crash of the process,
//! not a power cut): `bench/persist.sh store` runs both, interleaved.
//!
//! `cargo run --release --example persist -- [--no-fsync] [UPDATES] [SENDERS] [BATCH] [DIR]`
//! (defaults 200000 1000 8, a temporary directory under $TMPDIR).

use relaytree::proto::{Attempt, Event, JobId, LeafState, LeafUpdate, NodeName};
use relaytree::rules::LeafRecord;
use relaytree::store::{keys, Store};
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let no_fsync = std::env::args().any(|a| a == "--no-fsync");
    let args: Vec<String> = std::env::args().filter(|a| a != "--no-fsync").collect();
    let arg =
        |i: usize, d: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d) };
    let (updates, senders, batch) = (arg(1, 200_000), arg(2, 1000), arg(3, 8));
    let tmp = tempfile::tempdir()?;
    let dir = args
        .get(4)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let store = if no_fsync {
        Store::open_without_fsync(&dir)?
    } else {
        Store::open(&dir)?
    };
    let leaves = store.table("leaves")?;
    let outbox = store.outbox("outbox")?;
    let relay = NodeName::new("r1")?;
    // Pending leaves to update, one per sender-client.
    let clients: Vec<NodeName> = (0..senders)
        .map(|i| NodeName::new(format!("c{i:06}")))
        .collect::<Result<_, _>>()?;
    for c in &clients {
        let rec = LeafRecord::pending(relay.clone(), Attempt(1), 0);
        leaves.put(&keys::job_client(JobId(1), c), &rec)?;
    }
    store.durable().await?;
    let per_sender = updates / senders;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let (store, leaves, outbox, relay) =
            (store.clone(), leaves.clone(), outbox.clone(), relay.clone());
        tasks.push(tokio::spawn(async move {
            let states = [
                LeafState::Delivered,
                LeafState::Running,
                LeafState::Succeeded,
            ];
            let mut done = 0;
            let mut job = 1u64;
            while done < per_sender {
                let mut events = Vec::with_capacity(batch);
                let mut writes = Vec::with_capacity(batch);
                for _ in 0..batch.min(per_sender - done) {
                    let k = keys::job_client(JobId(job), &c);
                    let cur: Option<LeafRecord> = leaves.get(&k)?;
                    let state = states[done % 3];
                    let u = LeafUpdate {
                        job: JobId(job),
                        attempt: Attempt(1),
                        client: c.clone(),
                        relay: relay.clone(),
                        state,
                        exit_code: Some(0),
                        reason: None,
                        output: None,
                        at_ms: 0,
                        out: None,
                        audit: None,
                    };
                    events.push(Event::Leaf(u));
                    let mut rec =
                        cur.unwrap_or_else(|| LeafRecord::pending(relay.clone(), Attempt(1), 0));
                    rec.state = state;
                    writes.push((k, rec));
                    done += 1;
                    if done % 3 == 0 {
                        job += 1;
                    }
                }
                // Events before the states they report, as the relay does.
                outbox.push(&events)?;
                for (k, rec) in &writes {
                    leaves.put(k, rec)?;
                }
                // Acknowledged only once on disk.
                store.durable().await?;
            }
            Ok::<usize, relaytree::store::StoreError>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "persist{}: {total} durable leaf updates from {senders} concurrent senders (batches of {batch}) in {secs:.3} s = {:.0} updates/s",
        if no_fsync { " (no fsync)" } else { "" },
        total as f64 / secs
    );
    Ok(())
}
