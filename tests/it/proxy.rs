//! A fault-injecting TCP proxy for tests (there is no `tc netem` here).
//!
//! Listens on `127.0.0.1:0` and forwards each accepted connection to one
//! upstream address. Each direction of a connection is a reader thread and a
//! writer thread joined by a channel of (due time, bytes), so a delay adds
//! latency without limiting throughput. The test switches the [`Mode`] at
//! any time; it applies to every connection, open or new:
//!
//! - `Pass`: forward as is (half-closes are forwarded too).
//! - `Delay(d)`: each chunk read is written `d` later (order kept).
//! - `Blackhole`: bytes read from either side are dropped; connections stay
//!   open, no FIN, no RST (a half-open link). A connection that lost bytes
//!   can never carry its stream again, so leaving blackhole mode closes those
//!   (FIN both ways) instead of handing the peers a corrupt stream.
//!   [`Proxy::blackhole_open`] does this to the connections open now only
//!   (a middlebox that forgot them): they never recover, new ones pass.
//! - `Reset`: open connections are closed with RST (`SO_LINGER` 0), and new
//!   ones are reset at once.
//! - `Cut`: open connections are closed (FIN) and new ones closed at once.
//!
//! Dropping the [`Proxy`] closes every connection and joins every thread.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often blocked reads and writes look at the stop flags.
const TICK: Duration = Duration::from_millis(100);

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Reset,
    Cut,
}

/// A running proxy; its control handle.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    stop: AtomicBool,
    accepted: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct State {
    mode: Mode,
    conns: Vec<Weak<Conn>>,
}

/// One proxied connection: the accepted socket and the upstream socket.
struct Conn {
    down: TcpStream,
    up: TcpStream,
    /// Blackholed whatever the mode (see [`Proxy::blackhole_open`]).
    hole: AtomicBool,
    /// Bytes were dropped: the stream is broken for good.
    lost: AtomicBool,
    /// Closed by the proxy: threads stop without forwarding anything more.
    closed: AtomicBool,
}

impl Conn {
    /// Ends the connection: with RST if `reset`, else FIN both ways. Both
    /// sockets are shut for reading, which wakes the reader threads; the
    /// sockets close when the last thread lets go of them.
    fn close(&self, reset: bool) {
        self.closed.store(true, Ordering::SeqCst);
        for s in [&self.down, &self.up] {
            if reset {
                zero_linger(s);
                // SHUT_RD sends nothing; the last close then sends the RST.
                let _ = s.shutdown(Shutdown::Read);
            } else {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// `SO_LINGER` 0: the last close of the socket sends RST (`std`'s
/// `set_linger` is unstable; tokio's `TcpSocket` sets it on a duplicate fd).
fn zero_linger(s: &TcpStream) {
    if let Ok(dup) = s.try_clone() {
        let _ = tokio::net::TcpSocket::from_std_stream(dup).set_zero_linger();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Starts a proxy to `upstream` (HOST:PORT) in `Pass` mode.
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream HOST:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mode: Mode::Pass,
                conns: Vec::new(),
            }),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, sh));
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's own HOST:PORT (give this to the dialing side).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Switches mode and applies it to the open connections.
    pub fn set(&self, mode: Mode) {
        let mut st = lock(&self.shared.state);
        st.mode = mode;
        st.conns.retain(|w| w.strong_count() > 0);
        for c in st.conns.iter().filter_map(Weak::upgrade) {
            match mode {
                Mode::Reset => c.close(true),
                Mode::Cut => c.close(false),
                Mode::Blackhole => {}
                Mode::Pass | Mode::Delay(_) => {
                    if c.lost.load(Ordering::SeqCst) && !c.hole.load(Ordering::SeqCst) {
                        c.close(false);
                    }
                }
            }
        }
    }

    pub fn pass(&self) {
        self.set(Mode::Pass)
    }
    pub fn delay(&self, d: Duration) {
        self.set(Mode::Delay(d))
    }
    pub fn blackhole(&self) {
        self.set(Mode::Blackhole)
    }
    pub fn reset(&self) {
        self.set(Mode::Reset)
    }
    pub fn cut(&self) {
        self.set(Mode::Cut)
    }
    /// Half-opens the connections open now, for good (a middlebox that lost
    /// their state): they stay open and silent whatever the mode; new
    /// connections are served by the mode as usual.
    pub fn blackhole_open(&self) {
        let st = lock(&self.shared.state);
        for c in st.conns.iter().filter_map(Weak::upgrade) {
            c.hole.store(true, Ordering::SeqCst);
        }
    }

    /// Back to `Pass`.
    pub fn restore(&self) {
        self.set(Mode::Pass)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let st = lock(&self.shared.state);
            for c in st.conns.iter().filter_map(Weak::upgrade) {
                c.close(false);
            }
        }
        // Wake the blocked accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    for down in listener.incoming() {
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = down else { continue };
        sh.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = lock(&sh.state).mode;
        match mode {
            Mode::Reset => {
                zero_linger(&down);
                continue; // dropped: RST
            }
            Mode::Cut => continue, // dropped: FIN
            _ => {}
        }
        let Ok(up) = TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(2)) else {
            continue; // upstream down: the client sees its connection closed
        };
        for s in [&down, &up] {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(TICK));
            let _ = s.set_write_timeout(Some(TICK));
        }
        let conn = Arc::new(Conn {
            down,
            up,
            hole: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        {
            // Registered under the lock that `set` holds: no mode change is missed.
            let mut st = lock(&sh.state);
            match st.mode {
                Mode::Reset => conn.close(true),
                Mode::Cut => conn.close(false),
                _ => {}
            }
            st.conns.push(Arc::downgrade(&conn));
        }
        let mut threads = lock(&sh.threads);
        threads.retain(|t| !t.is_finished());
        for to_up in [true, false] {
            let (tx, rx) = mpsc::channel();
            let (c, s) = (conn.clone(), sh.clone());
            threads.push(std::thread::spawn(move || reader(&c, &s, to_up, tx)));
            let c = conn.clone();
            threads.push(std::thread::spawn(move || writer(&c, to_up, rx)));
        }
    }
}

/// Reads one direction and hands each chunk to the writer with its due time.
fn reader(c: &Conn, sh: &Shared, to_up: bool, tx: mpsc::Sender<(Instant, Vec<u8>)>) {
    let mut src = if to_up { &c.down } else { &c.up };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            c.close(false);
        }
        if c.closed.load(Ordering::SeqCst) {
            return;
        }
        let r = src.read(&mut buf);
        if let Err(e) = &r {
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            ) {
                continue; // SO_RCVTIMEO: look at the flags again
            }
        }
        let mode = lock(&sh.state).mode;
        // Dark: nothing gets through, not even a FIN or a RST.
        let dark = mode == Mode::Blackhole || c.hole.load(Ordering::SeqCst);
        if dark {
            c.lost.store(true, Ordering::SeqCst);
        }
        let n = match r {
            Ok(0) => return, // EOF: dropping `tx` tells the writer to pass on the FIN
            Ok(_) if dark => continue,
            Ok(n) => n,
            Err(_) => {
                // Reset by the peer: pass it on as a reset.
                if !dark && !c.closed.load(Ordering::SeqCst) {
                    c.close(true);
                }
                return;
            }
        };
        let due = match mode {
            Mode::Delay(d) => Instant::now() + d,
            _ => Instant::now(),
        };
        if tx.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// Writes one direction's chunks when they are due; on the reader's EOF,
/// half-closes the destination.
fn writer(c: &Conn, to_up: bool, rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    let mut dst = if to_up { &c.up } else { &c.down };
    for (due, bytes) in rx {
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            if c.closed.load(Ordering::SeqCst) {
                return;
            }
            match dst.write(rest) {
                Ok(0) => return,
                Ok(n) => rest = &rest[n..],
                // SO_SNDTIMEO expired with nothing written: look at the flags again.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    c.close(true);
                    return;
                }
            }
        }
    }
    // A half-open link carries no FIN either.
    if !c.closed.load(Ordering::SeqCst) && !c.lost.load(Ordering::SeqCst) {
        let _ = dst.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1:0; serves until the test process ends.
    fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = &s;
                    let mut w = &s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn client(p: &Proxy) -> TcpStream {
        let s = TcpStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn proxy_modes() {
        let p = Proxy::start(&echo());
        let mut a = client(&p);
        assert_eq!(roundtrip(&mut a, b"hello").unwrap(), b"hello");

        p.delay(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(roundtrip(&mut a, b"slow").unwrap(), b"slow");
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );

        p.blackhole();
        a.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        a.write_all(b"lost").unwrap();
        let mut b = [0u8; 4];
        let e = a.read(&mut b).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "blackholed link neither answers nor closes: {e:?}"
        );
        // Leaving blackhole mode closes the connection that lost bytes.
        p.restore();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(a.read(&mut b).unwrap(), 0, "FIN after restore");

        let mut c = client(&p);
        assert_eq!(roundtrip(&mut c, b"again").unwrap(), b"again");
        p.reset();
        let e = c.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}");
        let mut d = client(&p);
        let r = roundtrip(&mut d, b"x");
        assert!(r.is_err(), "reset mode resets new connections: {r:?}");

        p.cut();
        let mut e = client(&p);
        assert!(
            roundtrip(&mut e, b"x").is_err(),
            "cut closes new connections"
        );
        p.restore();
        let mut f = client(&p);
        assert_eq!(roundtrip(&mut f, b"back").unwrap(), b"back");
        assert_eq!(p.accepted(), 5);
    }
}
