//! A forged relay's listening side, for the tests that play a relay from the
//! test itself (a real relay certificate speaking the protocol by hand): it
//! admits agents and hands each session to the test. Owns nothing else.

use relaytree::link::{self, Admission, HqClock, Session, Timing};
use relaytree::proto::{Hello, Role, PROTOCOL_VERSION};
use relaytree::tls::Identity;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Listens on a free loopback port as the relay `id` names, passing `clock`
/// on to the agents that connect; returns the address and the sessions as
/// they arrive. Serving stops with `stop`.
pub async fn listen_as_relay(
    id: &Identity,
    clock: HqClock,
    stop: CancellationToken,
) -> (String, tokio::sync::mpsc::Receiver<Session>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = tokio_rustls::TlsAcceptor::from(id.server_config(&[Role::Agent]).unwrap());
    let adm = Arc::new(Admission {
        admit: vec![Role::Agent],
        me: Hello {
            version: PROTOCOL_VERSION,
            name: id.me().name.clone(),
            role: Role::Relay,
            purpose: Default::default(),
            hq_now_ms: None,
            about: None,
            idle_timeout_ms: None,
        },
        trust_domain: id.me().trust_domain.clone(),
        timing: Timing::default(),
        limits: Default::default(),
        denied: Default::default(),
        clock,
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<Session>(4);
    tokio::spawn(link::serve(listener, acceptor, adm, stop, move |s| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(s).await;
        }
    }));
    (addr, rx)
}
