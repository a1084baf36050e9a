//! The parent's side of a child's session, one piece for HQ and relays alike
//! and for every kind of child (relays and agents): keeps the child registry
//! (registered under its lock; only the child's current session unregisters
//! it), re-sends everything queued for the child on every connect (the
//! [`DownQueue`]), clears the queue on acknowledgements, and takes each batch
//! of events through apply, then `durable`, then `Ack`.
//!
//! The role supplies only what differs ([`Downstream`]): what to record as a
//! child comes and goes, what else to send on connect (a deny list, an
//! agent's pending leaves), and its `apply` (with its subtree check, see
//! [`super::confine`]). Knows nothing of what events mean.

use super::queue::{send_now, DownQueue, QueueKey};
use super::{send, unexpected, LinkError, Session, SessionRx, SessionTx};
use crate::proto::{Event, Msg, NodeName};
use crate::store::{Store, StoreError};
use crate::tls::PeerIdentity;
use std::collections::HashMap;
use std::sync::Mutex;

/// Messages for other children, sent once what caused them is durable.
pub type Outgoing = Vec<(NodeName, Msg)>;

/// What a role supplies to serve its children.
pub trait Downstream: Send + Sync {
    /// The role's store.
    fn store(&self) -> &Store;
    /// Everything queued for children until they acknowledge it.
    fn down(&self) -> &DownQueue;
    /// Live sessions of direct children.
    fn children(&self) -> &Mutex<HashMap<NodeName, SessionTx>>;
    /// Before the child is registered, outside the registry lock (e.g. an
    /// agent that moved here). Made durable before anything is sent.
    fn arriving(&self, _child: &PeerIdentity) -> Result<Outgoing, StoreError> {
        Ok(Vec::new())
    }
    /// Under the registry lock, as this session becomes the child's current
    /// one; `about` is what the child said of itself in its `Hello`.
    fn joined(
        &self,
        _child: &PeerIdentity,
        _about: Option<&crate::proto::About>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Under the registry lock, as the child's current session ends.
    fn left(&self, _child: &PeerIdentity) -> Result<(), StoreError> {
        Ok(())
    }
    /// What else to send on connect, after everything queued for the child.
    fn greeting(&self, _child: &PeerIdentity) -> Result<Vec<Msg>, StoreError> {
        Ok(Vec::new())
    }
    /// An acknowledgement, after the queue dropped what it clears.
    fn acked(&self, _child: &PeerIdentity, _ack: &Msg) -> Result<(), StoreError> {
        Ok(())
    }
    /// Applies (not yet durably) one batch, with its subtree check. Returns
    /// messages for other children.
    fn apply(&self, child: &PeerIdentity, events: &[(u64, Event)]) -> Result<Outgoing, StoreError>;
    /// After a batch is durable and acknowledged.
    fn applied(&self, _child: &PeerIdentity, _events: &[(u64, Event)]) {}
    /// Any other message from the child (a certificate request): handled
    /// by the role (an answer goes on `tx`), or given back (the default)
    /// and refused as not allowed.
    fn request<'a>(
        &'a self,
        _child: &'a PeerIdentity,
        _tx: &'a SessionTx,
        msg: Msg,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Msg>> + Send + 'a>> {
        Box::pin(async move { Err(msg) })
    }
}

/// Serves one child session to its end.
pub async fn serve<D: Downstream>(d: &D, s: Session) -> Result<(), LinkError> {
    let Session {
        peer,
        tx,
        mut rx,
        about,
        ..
    } = s;
    let r = async {
        let out = d.arriving(&peer)?;
        {
            // Registering and recording under one lock: an older session of
            // the same child ending now cannot undo it.
            let mut children = d.children().lock().unwrap_or_else(|p| p.into_inner());
            children.insert(peer.name.clone(), tx.clone());
            d.joined(&peer, about.as_ref())?;
        }
        d.store().durable().await?;
        send_now(d.children(), out);
        for m in d.down().queued(&peer.name)? {
            send(&tx, m).await?;
        }
        for m in d.greeting(&peer)? {
            send(&tx, m).await?;
        }
        serve_loop(d, &peer, &tx, &mut rx).await
    }
    .await;
    {
        // Only the child's current session unregisters it: a stale one (a
        // half-open link the child already left) ends quietly.
        let mut children = d.children().lock().unwrap_or_else(|p| p.into_inner());
        if children
            .get(&peer.name)
            .is_some_and(|t| t.same_channel(&tx))
        {
            children.remove(&peer.name);
            d.left(&peer)?;
        }
    }
    if let Err(e @ (LinkError::Protocol(_) | LinkError::Codec(_))) = &r {
        let _ = tx.try_send(Msg::Bye {
            reason: e.to_string(),
        });
    }
    r
}

async fn serve_loop<D: Downstream>(
    d: &D,
    peer: &PeerIdentity,
    tx: &SessionTx,
    rx: &mut SessionRx,
) -> Result<(), LinkError> {
    loop {
        let msg = rx.recv().await?;
        if QueueKey::of_ack(&msg).is_some() {
            d.down().ack(&peer.name, &msg)?;
            d.acked(peer, &msg)?;
            continue;
        }
        match msg {
            Msg::Events(events) => {
                let Some(last) = events.last().map(|(s, _)| *s) else {
                    continue;
                };
                let out = d.apply(peer, &events)?;
                d.store().durable().await?;
                send(tx, Msg::Ack { seq: last }).await?;
                send_now(d.children(), out);
                d.applied(peer, &events);
            }
            other => {
                if let Err(other) = d.request(peer, tx, other).await {
                    return Err(unexpected(
                        &other,
                        &format!("from {} {}", peer.role.with_article(), peer.name),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{JobId, MsgCodec, Purpose, Role};
    use futures::{SinkExt, StreamExt};
    use std::sync::Arc;
    use tokio_util::codec::Framed;

    struct Fake {
        store: Store,
        down: DownQueue,
        children: Mutex<HashMap<NodeName, SessionTx>>,
        applied: Mutex<Vec<u64>>,
    }

    impl Downstream for Fake {
        fn store(&self) -> &Store {
            &self.store
        }
        fn down(&self) -> &DownQueue {
            &self.down
        }
        fn children(&self) -> &Mutex<HashMap<NodeName, SessionTx>> {
            &self.children
        }
        fn greeting(&self, _child: &PeerIdentity) -> Result<Vec<Msg>, StoreError> {
            Ok(vec![Msg::Deny { names: vec![] }])
        }
        fn apply(
            &self,
            _c: &PeerIdentity,
            events: &[(u64, Event)],
        ) -> Result<Outgoing, StoreError> {
            let mut a = self.applied.lock().unwrap();
            a.extend(events.iter().map(|(s, _)| *s));
            Ok(Vec::new())
        }
    }

    type Child = Framed<tokio::io::DuplexStream, MsgCodec>;

    /// A session of agent `c1` served by `fake`; the child's end of it.
    fn connect(fake: &Arc<Fake>) -> (Child, tokio::task::JoinHandle<Result<(), LinkError>>) {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let peer = PeerIdentity {
            role: Role::Agent,
            name: NodeName::new("c1").unwrap(),
            trust_domain: "test".into(),
        };
        let s = super::super::session::start(
            Framed::new(ours, MsgCodec::default()),
            peer,
            super::super::Timing::default(),
            Purpose::Session,
        );
        let f = fake.clone();
        let h = tokio::spawn(async move { serve(&*f, s).await });
        (Framed::new(theirs, MsgCodec::default()), h)
    }

    async fn next(child: &mut Child) -> Msg {
        loop {
            match child.next().await.unwrap().unwrap() {
                Msg::Heartbeat => continue,
                m => return m,
            }
        }
    }

    #[tokio::test]
    async fn queued_messages_are_resent_on_every_connect_until_acked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let down = DownQueue::new(store.table("down").unwrap());
        let c1 = NodeName::new("c1").unwrap();
        down.put(&c1, &Msg::Cancel { job: JobId(7) }).unwrap();
        let purge = Msg::Purge {
            id: 1,
            jobs: vec![JobId(3)],
        };
        down.put(&c1, &purge).unwrap();
        let fake = Arc::new(Fake {
            store,
            down,
            children: Mutex::new(HashMap::new()),
            applied: Mutex::new(Vec::new()),
        });

        let (mut child, h) = connect(&fake);
        assert_eq!(next(&mut child).await, Msg::Cancel { job: JobId(7) });
        assert_eq!(next(&mut child).await, purge);
        assert_eq!(next(&mut child).await, Msg::Deny { names: vec![] });
        assert!(fake.children.lock().unwrap().contains_key(&c1));
        child.send(&Msg::CancelAck { job: JobId(7) }).await.unwrap();
        let ev = Event::ClientJoined {
            client: c1.clone(),
            relay: c1.clone(),
            at_ms: 0,
        };
        child.send(&Msg::Events(vec![(5, ev)])).await.unwrap();
        assert_eq!(next(&mut child).await, Msg::Ack { seq: 5 });
        assert_eq!(*fake.applied.lock().unwrap(), vec![5]);
        drop(child);
        assert!(h
            .await
            .unwrap()
            .is_err_and(|e| matches!(e, LinkError::Closed)));
        assert!(!fake.children.lock().unwrap().contains_key(&c1));

        // The next session gets only what is still unacknowledged.
        let (mut child, h) = connect(&fake);
        assert_eq!(next(&mut child).await, purge);
        assert_eq!(next(&mut child).await, Msg::Deny { names: vec![] });
        // Anything but events and acks closes the session with a reason.
        let odd = Msg::Forget {
            client: c1.clone(),
            moved_to: c1.clone(),
        };
        child.send(&odd).await.unwrap();
        assert!(
            matches!(next(&mut child).await, Msg::Bye { reason } if reason.contains("forget not allowed from an agent c1"))
        );
        assert!(h
            .await
            .unwrap()
            .is_err_and(|e| matches!(e, LinkError::Protocol(_))));
    }
}
