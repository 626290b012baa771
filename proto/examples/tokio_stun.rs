//! Driving sans-IO machines from tokio: a `StunServer` in one tokio task and a `StunClient` in
//! another, each on its own `tokio::net::UdpSocket` on 127.0.0.1, with the same small driver.
//!
//! The driver is the whole integration a runtime needs (see [`TokioDriver::run`]):
//!
//! 1. drain the machine: `poll_transmit` -> `send_to`, `poll_socket_op` -> bind (or drop) a tokio
//!    socket kept in a map from the machine's `SocketId`s, `poll_event` -> the caller;
//! 2. wait with `tokio::select!` for the first of: a datagram on any socket (`recv_from`), the
//!    machine's deadline (`tokio::time::sleep_until(poll_timeout)`), or a stop signal;
//! 3. hand that to the machine (`handle_datagram` / `handle_timeout`) with `now` converted from
//!    `tokio::time::Instant` to `p2pd_proto::Instant` against an epoch, and loop.
//!
//! ```text
//! cargo run -p p2pd-proto --example tokio_stun
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::collections::HashMap;
use std::future::{pending, Future};
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::task::Poll;
use std::time::Duration;

use p2pd_proto::client::{ClientConfig, ClientEvent, Request, StunClient, TransactionResult};
use p2pd_proto::server::{ServerConfig, ServerEvent, ServerStats, StunServer};
use p2pd_proto::{
    Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transport,
    TRANSMIT_BUFFER_LEN,
};
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;

/// How a [`TokioDriver::run`] ended.
enum End<R, S> {
    /// The event callback answered `Break(r)`.
    Break(R),
    /// The stop future completed with `s`.
    Stopped(S),
}

/// Drives one machine on tokio UDP sockets. Only UDP binds are carried out (the STUN machines
/// here need nothing else); other intents are answered with a failure, as the contract asks.
struct TokioDriver {
    /// `p2pd_proto::Instant::ZERO`: every `now` is the time since this instant.
    epoch: tokio::time::Instant,
    /// The machine's socket ids -> the real sockets.
    sockets: HashMap<SocketId, UdpSocket>,
    /// Socket outcomes owed to the machine, delivered once a drain pass is done.
    outcomes: Vec<(SocketId, SocketOutcome)>,
    tx: Vec<u8>,
    rx: Vec<u8>,
}

impl TokioDriver {
    fn new(epoch: tokio::time::Instant) -> Self {
        TokioDriver {
            epoch,
            sockets: HashMap::new(),
            outcomes: Vec::new(),
            tx: vec![0; TRANSMIT_BUFFER_LEN],
            rx: vec![0; 65_536],
        }
    }

    /// tokio's clock -> the machine's clock (nanoseconds since the epoch). A `std::time::Instant`
    /// converts the same way (`tokio::time::Instant::from_std`).
    fn to_proto(&self, t: tokio::time::Instant) -> Instant {
        let nanos = t.saturating_duration_since(self.epoch).as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The machine's clock -> tokio's, for `sleep_until`.
    fn to_tokio(&self, t: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_nanos(t.as_nanos())
    }

    fn now(&self) -> Instant {
        self.to_proto(tokio::time::Instant::now())
    }

    /// Runs `machine` until `on_event` breaks or `stop` completes.
    async fn run<M: Machine, R, S>(
        &mut self,
        machine: &mut M,
        stop: impl Future<Output = S>,
        mut on_event: impl FnMut(&mut M, Instant, M::Event) -> ControlFlow<R>,
    ) -> End<R, S> {
        let mut stop = std::pin::pin!(stop);
        loop {
            if let ControlFlow::Break(r) = self.drain(machine, &mut on_event).await {
                return End::Break(r);
            }
            // The machine is quiet: sleep until its deadline, a datagram, or the stop signal.
            let wake = machine.poll_timeout().map(|d| self.to_tokio(d));
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => pending().await,
                }
            };
            tokio::select! {
                s = &mut stop => return End::Stopped(s),
                (socket, received) = recv_from_any(&self.sockets, &mut self.rx) => {
                    let now = self.to_proto(tokio::time::Instant::now());
                    match received {
                        Ok((len, from)) => {
                            // A verdict says what the machine did with it; nothing to do here.
                            let _ = machine.handle_datagram(now, socket, from, &self.rx[..len]);
                        }
                        Err(e) => machine.handle_socket_result(now, socket, failed(OpKind::Receive, None, &e)),
                    }
                }
                () = sleep => machine.handle_timeout(self.now()),
            }
        }
    }

    /// Carries out everything the machine asks for, until it has nothing left: transmits, socket
    /// intents (answered after each pass, as the contract's drain order wants), events.
    async fn drain<M: Machine, R>(
        &mut self,
        machine: &mut M,
        on_event: &mut impl FnMut(&mut M, Instant, M::Event) -> ControlFlow<R>,
    ) -> ControlFlow<R> {
        loop {
            let now = self.now();
            // Outcomes left from a pass that ended in `Break`.
            for (socket, outcome) in std::mem::take(&mut self.outcomes) {
                machine.handle_socket_result(now, socket, outcome);
            }
            let mut progressed = false;
            while let Some(t) = machine.poll_transmit(&mut self.tx) {
                progressed = true;
                let sent = match self.sockets.get(&t.socket) {
                    Some(s) => s.send_to(&self.tx[..t.len], t.destination).await,
                    None => Err(io::ErrorKind::NotFound.into()),
                };
                if let Err(e) = sent {
                    self.outcomes
                        .push((t.socket, failed(OpKind::Send, Some(t.destination), &e)));
                }
            }
            while let Some(op) = machine.poll_socket_op() {
                progressed = true;
                match op {
                    SocketOp::Bind {
                        socket,
                        transport: Transport::Udp,
                        local,
                        ..
                    } => match UdpSocket::bind(local).await.and_then(|s| {
                        let local = s.local_addr()?;
                        Ok((s, local))
                    }) {
                        Ok((s, local)) => {
                            self.sockets.insert(socket, s);
                            self.outcomes.push((socket, SocketOutcome::Bound { local }));
                        }
                        Err(e) => self.outcomes.push((socket, failed(OpKind::Bind, None, &e))),
                    },
                    SocketOp::Close { socket } => {
                        self.sockets.remove(&socket); // dropping a tokio socket closes it
                    }
                    other => {
                        // TCP and the rest: not carried out by this small driver.
                        let op = match other {
                            SocketOp::Connect { .. } => OpKind::Connect,
                            SocketOp::Listen { .. } => OpKind::Listen,
                            SocketOp::Accept { .. } => OpKind::Accept,
                            SocketOp::SetTtl { .. } => OpKind::SetTtl,
                            SocketOp::Shutdown { .. } => OpKind::Shutdown,
                            _ => OpKind::Bind,
                        };
                        let unsupported = io::Error::from(io::ErrorKind::Unsupported);
                        self.outcomes
                            .push((other.socket(), failed(op, None, &unsupported)));
                    }
                }
            }
            while let Some(event) = machine.poll_event() {
                progressed = true;
                on_event(machine, now, event)?;
            }
            if !progressed && self.outcomes.is_empty() {
                return ControlFlow::Continue(());
            }
        }
    }
}

/// Receives one datagram from whichever socket has one first. `UdpSocket::recv_from` waits on one
/// socket; a machine may own several, so poll them all (first come, first served).
async fn recv_from_any(
    sockets: &HashMap<SocketId, UdpSocket>,
    buf: &mut [u8],
) -> (SocketId, io::Result<(usize, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        for (id, socket) in sockets {
            let mut read = ReadBuf::new(buf);
            if let Poll::Ready(result) = socket.poll_recv_from(cx, &mut read) {
                let len = read.filled().len();
                return Poll::Ready((*id, result.map(|from| (len, from))));
            }
        }
        Poll::Pending // every socket registered the waker (none at all: wait for the others)
    })
    .await
}

/// A `SocketOutcome::Failed` for an I/O error.
fn failed(op: OpKind, destination: Option<SocketAddr>, e: &io::Error) -> SocketOutcome {
    let error = match e.kind() {
        io::ErrorKind::AddrInUse => IoError::AddrInUse,
        io::ErrorKind::AddrNotAvailable => IoError::AddrNotAvailable,
        io::ErrorKind::PermissionDenied => IoError::PermissionDenied,
        io::ErrorKind::ConnectionRefused => IoError::ConnectionRefused,
        io::ErrorKind::NotFound => IoError::UnknownSocket,
        _ => IoError::Other(e.raw_os_error()),
    };
    SocketOutcome::Failed {
        op,
        destination,
        error,
    }
}

/// The client task: one Binding request to `server`; returns its result and the socket's address.
async fn client_task(
    epoch: tokio::time::Instant,
    server: SocketAddr,
) -> (TransactionResult, SocketAddr) {
    let mut driver = TokioDriver::new(epoch);
    let mut client = StunClient::new(ClientConfig::default(), 7);
    let now = driver.now();
    let socket = client
        .open_socket(now, "127.0.0.1:0".parse().unwrap(), Default::default())
        .unwrap();
    // A transaction may start before its socket is bound: the request waits for the bind.
    client.start(now, Request::binding(socket, server)).unwrap();
    let mut local = None;
    let done = driver
        .run(&mut client, pending::<()>(), |_, _, event| match event {
            ClientEvent::SocketReady { local: l, .. } => {
                local = Some(l);
                ControlFlow::Continue(())
            }
            ClientEvent::Transaction(done) => ControlFlow::Break(done),
            _ => ControlFlow::Continue(()),
        })
        .await;
    let End::Break(done) = done else {
        unreachable!("never stopped")
    };
    // Close the client and run it to its last event: its socket is dropped on the way.
    client.close(driver.now());
    let closed = driver
        .run(&mut client, pending::<()>(), |_, _, event| match event {
            ClientEvent::Closed => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })
        .await;
    assert!(matches!(closed, End::Break(())));
    assert!(driver.sockets.is_empty());
    (done, local.expect("the socket was bound"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let epoch = tokio::time::Instant::now();
    let started = std::time::Instant::now();

    // The server asks to bind 127.0.0.1:0; run it until it reports where it listens.
    let mut server = StunServer::new(ServerConfig::single("127.0.0.1:0".parse().unwrap())).unwrap();
    let mut server_driver = TokioDriver::new(epoch);
    let listening = server_driver
        .run(&mut server, pending::<()>(), |_, _, event| match event {
            ServerEvent::Listening { local, .. } => ControlFlow::Break(local),
            other => panic!("server: {other:?}"),
        })
        .await;
    let End::Break(server_addr) = listening else {
        unreachable!("never stopped")
    };
    println!("server task: listening on {server_addr}");

    // The client in its own task.
    let client = tokio::spawn(client_task(epoch, server_addr));

    // The server in another task, serving until the client task has finished; then it closes.
    let server = tokio::spawn(async move {
        let client_result = match server_driver
            .run(&mut server, client, |_, _, _| {
                ControlFlow::<()>::Continue(())
            })
            .await
        {
            End::Stopped(joined) => joined.expect("the client task"),
            End::Break(()) => unreachable!("the callback never breaks"),
        };
        server.close(server_driver.now());
        let closed = server_driver
            .run(&mut server, pending::<()>(), |_, _, event| match event {
                ServerEvent::Closed => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            })
            .await;
        assert!(matches!(closed, End::Break(())));
        assert!(server_driver.sockets.is_empty());
        (client_result, server.stats())
    });

    let ((done, client_local), stats): ((TransactionResult, SocketAddr), ServerStats) =
        server.await.expect("the server task");
    let reply = done.outcome.expect("the server answered");
    println!(
        "client task: socket {client_local}, mapped address {}",
        reply.mapped
    );
    println!(
        "rtt {:?}, {} transmission(s); server answered {} request(s); {:?} in all",
        reply.rtt,
        reply.transmissions,
        stats.responses,
        started.elapsed()
    );
    // On loopback there is no NAT: the server saw the client's own socket address.
    assert_eq!(reply.mapped, client_local);
    assert_eq!(reply.source, server_addr);
    assert!(stats.requests >= 1 && stats.responses == stats.requests);
    println!("ok");
}
