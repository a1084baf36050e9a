//! Writes the frame target's seed corpus: each message of the protocol as a
//! bare MessagePack payload (`raw-*`), as one length-prefixed frame
//! (`framed-*`), and a stream of several frames (`stream-session`).
//!
//! Usage: `cargo run --example frame_seeds -- corpus/frame`

use bytes::BytesMut;
use relaytree::proto::*;
use std::path::PathBuf;
use tokio_util::codec::Encoder;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn messages() -> Vec<(&'static str, Msg)> {
    let run = Action::Run(RunSpec {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: vec![("K".into(), "v".into())],
        cwd: Some("/tmp".into()),
        timeout_ms: Some(5000),
    });
    let leaf = LeafUpdate {
        job: JobId(7),
        attempt: Attempt(1),
        client: name("c1"),
        relay: name("r1"),
        state: LeafState::Failed,
        exit_code: Some(2),
        reason: Some("exit 2".into()),
        output: Some("oops\n".into()),
        at_ms: 1_700_000_000_000,
        out: None,
    };
    let totals = Totals {
        failed: 1,
        succeeded: 3,
        ..Totals::default()
    };
    vec![
        (
            "hello",
            Msg::Hello(Hello {
                version: PROTOCOL_VERSION,
                name: name("r1"),
                role: Role::Relay,
            }),
        ),
        ("heartbeat", Msg::Heartbeat),
        (
            "assign",
            Msg::Assign(Assignment {
                job: JobId(7),
                attempt: Attempt(2),
                action: run.clone(),
                expires_at_ms: Some(1_700_000_060_000),
                scope: Scope::Targets(vec![name("c1"), name("c2")]),
                orders: vec![SignedOrder {
                    body: vec![0x80, 1, 2, 3],
                    sig: vec![0xaa; 64],
                    relay: Some(name("r1")),
                }],
            }),
        ),
        (
            "assign-ping",
            Msg::Assign(Assignment {
                job: JobId(1),
                attempt: Attempt(1),
                action: Action::Ping,
                expires_at_ms: None,
                scope: Scope::AllLowerOf(vec![name("r1")]),
                orders: vec![],
            }),
        ),
        (
            "assign-ack",
            Msg::AssignAck {
                job: JobId(7),
                attempt: Attempt(2),
            },
        ),
        (
            "forget",
            Msg::Forget {
                client: name("c1"),
                moved_to: name("r2"),
            },
        ),
        ("forget-ack", Msg::ForgetAck { client: name("c1") }),
        (
            "deny",
            Msg::Deny {
                names: vec![name("c9"), name("r3")],
            },
        ),
        (
            "events",
            Msg::Events(vec![
                (1, Event::Leaf(leaf)),
                (
                    2,
                    Event::Targets {
                        job: JobId(7),
                        attempt: Attempt(1),
                        reporter: name("r1"),
                        leaves: vec![(name("c1"), name("r1"))],
                        last: true,
                    },
                ),
                (
                    3,
                    Event::ClientJoined {
                        client: name("c1"),
                        relay: name("r1"),
                    },
                ),
                (
                    4,
                    Event::RelayJoined {
                        relay: name("r1"),
                        parent: name("hq"),
                    },
                ),
                (
                    5,
                    Event::RelayLeft {
                        relay: name("r1"),
                        parent: name("hq"),
                        at_ms: 9,
                    },
                ),
            ]),
        ),
        ("ack", Msg::Ack { seq: u64::MAX }),
        (
            "admin-create",
            Msg::AdminReq {
                id: 1,
                req: AdminRequest::CreateJob {
                    dest: vec![name("r1")],
                    action: run,
                    expires_ms: Some(60_000),
                },
            },
        ),
        (
            "admin-wait",
            Msg::AdminReq {
                id: 2,
                req: AdminRequest::Wait {
                    job: JobId(7),
                    timeout_ms: 1000,
                },
            },
        ),
        (
            "admin-status",
            Msg::AdminResp {
                id: 3,
                resp: Ok(AdminResponse::Status(JobStatus {
                    job: JobId(7),
                    attempt: Attempt(1),
                    done: false,
                    totals: totals.clone(),
                    relays: vec![RelayTotals {
                        relay: name("r1"),
                        totals,
                    }],
                    clients: vec![ClientStatus {
                        client: name("c1"),
                        relay: name("r1"),
                        attempt: Attempt(1),
                        state: LeafState::Running,
                        exit_code: None,
                        reason: None,
                        output: Some("x".into()),
                    }],
                    action: "run sh".into(),
                    dest: vec![name("r1")],
                    awaiting: vec![],
                    created_at_ms: 1,
                    expires_at_ms: None,
                    last_change_ms: 1,
                    matched: 1,
                })),
            },
        ),
        (
            "admin-tree",
            Msg::AdminResp {
                id: 4,
                resp: Ok(AdminResponse::Tree(TreeView {
                    hq: name("hq"),
                    relays: vec![RelayView {
                        relay: name("r1"),
                        parent: name("hq"),
                        connected: true,
                        last_seen_ms: 5,
                        state: "connected".into(),
                        clients: 2,
                    }],
                    clients: 2,
                })),
            },
        ),
        (
            "admin-err",
            Msg::AdminResp {
                id: 5,
                resp: Err("no such job".into()),
            },
        ),
        (
            "bye",
            Msg::Bye {
                reason: "shutting down".into(),
            },
        ),
    ]
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: frame_seeds DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut stream = BytesMut::new();
    for (kind, m) in messages() {
        let raw = codec::encode(&m).unwrap();
        std::fs::write(dir.join(format!("raw-{kind}")), &raw).unwrap();
        let mut framed = BytesMut::new();
        MsgCodec::default().encode(&m, &mut framed).unwrap();
        std::fs::write(dir.join(format!("framed-{kind}")), &framed).unwrap();
        if matches!(kind, "hello" | "heartbeat" | "events" | "ack" | "bye") {
            stream.extend_from_slice(&framed);
        }
    }
    std::fs::write(dir.join("stream-session"), &stream).unwrap();
}
