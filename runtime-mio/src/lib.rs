//! # p2pd-mio
//!
//! A single-threaded [mio] + [socket2] event loop that drives any [`p2pd_proto::Machine`] on real
//! sockets: [`Runtime`].
//!
//! The machine asks for sockets with intents ([`p2pd_proto::SocketOp`]): the runtime creates them
//! with socket2, applies `SO_REUSEADDR` / `SO_REUSEPORT` and interface binding (`SO_BINDTODEVICE`
//! on Linux, `IP_BOUND_IF` on macOS, `IP_UNICAST_IF` on Windows) **before** `bind`, registers them
//! with mio under a slot token, and answers with [`p2pd_proto::SocketOutcome::Bound`] (the real
//! local address) or `Failed`. It sends the machine's transmits, hands it every received datagram,
//! calls `handle_timeout` once its deadline has passed, and gives its events to a callback that may
//! issue further commands. Errors on the network side (a send on a closed socket, ICMP port
//! unreachable, a full send buffer) are reported to the machine, never panics.
//!
//! UDP and TCP over IPv4 and IPv6 are supported. A TCP socket is bound first (so reuse flags
//! and the device apply, as bind-before-connect needs), then connected without blocking
//! ([`p2pd_proto::SocketOutcome::Connected`] when the handshake completes); stream bytes go to
//! `handle_stream`, EOF is reported as `PeerClosed`, and transmits on a stream are written in
//! order (queued within [`MAX_STREAM_BUFFER`] bytes when the kernel pushes back). `Shutdown` shuts
//! down a stream's sending half once those queued bytes are written (the peer reads EOF, we keep
//! receiving); `Close` drops whatever is still queued. `Listen` puts a
//! bound socket into the listening state; each `Accept` intent names the next accepted connection
//! (answered with `Accepted`), and connections nobody asked for wait in the kernel's backlog.
//!
//! Runnable example: `cargo run -p p2pd-mio --example stun_on_runtime` (our STUN server in a
//! thread and our STUN client, each on its own runtime on 127.0.0.1, printing the mapped address).
//!
//! ## Example
//!
//! A machine that binds a socket on loopback, sends itself one datagram, reports its length and
//! closes the socket; the runtime stops when the machine is idle.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::ops::ControlFlow;
//! use std::time::Duration;
//! use p2pd_mio::{RunEnd, Runtime};
//! use p2pd_proto::{
//!     Instant, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Transport, Verdict,
//! };
//!
//! #[derive(Default)]
//! struct Loopback {
//!     ops: Vec<SocketOp>,
//!     send_to: Option<SocketAddr>,
//!     events: Vec<usize>,
//! }
//!
//! impl Machine for Loopback {
//!     type Event = usize;
//!     fn handle_datagram(&mut self, _: Instant, socket: SocketId, _: SocketAddr, data: &[u8]) -> Verdict {
//!         self.events.push(data.len());
//!         self.ops.push(SocketOp::Close { socket });
//!         Verdict::Consumed
//!     }
//!     fn handle_socket_result(&mut self, _: Instant, _: SocketId, outcome: SocketOutcome) {
//!         if let SocketOutcome::Bound { local } = outcome {
//!             self.send_to = Some(local); // to ourselves
//!         }
//!     }
//!     fn handle_timeout(&mut self, _: Instant) {}
//!     fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
//!         let destination = self.send_to.take()?;
//!         buf[..5].copy_from_slice(b"hello");
//!         Some(Transmit { socket: SocketId(1), destination, len: 5 })
//!     }
//!     fn poll_socket_op(&mut self) -> Option<SocketOp> { self.ops.pop() }
//!     fn poll_event(&mut self) -> Option<usize> { self.events.pop() }
//!     fn poll_timeout(&self) -> Option<Instant> { None }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let mut machine = Loopback::default();
//! machine.ops.push(SocketOp::Bind {
//!     socket: SocketId(1),
//!     transport: Transport::Udp,
//!     local: "127.0.0.1:0".parse().unwrap(),
//!     options: Default::default(),
//! });
//! let mut runtime = Runtime::new()?;
//! let mut received = 0;
//! let end = runtime.run(&mut machine, Some(Duration::from_secs(5)), |_machine, _now, len| {
//!     received = len;
//!     ControlFlow::Continue(())
//! })?;
//! assert_eq!(end, RunEnd::Idle);
//! assert_eq!(received, 5);
//! assert_eq!(runtime.open_sockets(), 0);
//! assert_eq!(runtime.stats().datagrams_received, 1);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod device;
mod error;
mod mmsg;
mod runtime;

pub use error::map_io_error;
pub use runtime::{
    RunEnd, Runtime, RuntimeStats, Waker, LINGER, MAX_STREAM_BUFFER, RECV_BUFFER_LEN,
};
