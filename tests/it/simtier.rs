//! The million-client bench's simulated tier (`examples/simtier.rs`, run
//! in-process here) still works at a small size: HQ -> 2 real relays -> 2
//! real relays each -> one simulated relay under each lower one with 50
//! virtual clients (200 in all). HQ learns every client through the real
//! relays, and a ping job gets one succeeded leaf from each, no more.

#[path = "../../examples/simtier.rs"]
#[allow(dead_code)]
mod sim;

use crate::harness::{states, Env};
use tokio_util::sync::CancellationToken;

#[test]
fn simulated_clients_register_and_answer_through_real_relays() {
    let mut env = Env::new();
    let hq = env.start_hq();
    let mut lower = Vec::new();
    for top in ["t1", "t2"] {
        let addr = env.start_relay(top, &hq);
        for m in 1..=2 {
            lower.push(env.start_relay(&format!("{top}-m{m}"), &addr));
        }
    }
    let specs: Vec<_> = lower
        .iter()
        .enumerate()
        .map(|(i, addr)| (env.issue("relay", &format!("sim{}", i + 1)), addr.clone()))
        .collect();
    let stop = CancellationToken::new();
    let sim_stop = stop.clone();
    let sim = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(sim::run(50, specs, sim_stop))
            .map_err(|e| e.to_string())
    });
    env.wait_clients(200);
    let job = env.create_ping(&["t1", "t2"]);
    let (code, waited) = env.wait_job(&job);
    let status = env.status(&job);
    stop.cancel();
    sim.join().unwrap().unwrap();
    assert_eq!(code, 0, "{waited}");
    let got = states(&status);
    assert_eq!(got.len(), 200, "{status}");
    for (client, state) in &got {
        assert!(client.starts_with("sim"), "{client}");
        assert_eq!(state, "succeeded", "{client}");
    }
    assert_eq!(status["totals"]["succeeded"], 200, "{status}");
}
