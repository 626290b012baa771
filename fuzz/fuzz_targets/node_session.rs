//! Stateful fuzzing of the whole node (`p2pd_node::Node`: rendezvous over MQTT, a PNP client, the
//! TCP listener and its STUN-over-TCP binding, the ladder's dials and reverse requests, punch
//! children, the secure-channel streams), driven through the contract checker. The target plays
//! the runtime and everyone the node talks to: outcomes for its intents (binds, connects,
//! accepts with arbitrary remotes, failures, EOF, `Writable`) and for any id; the broker
//! (connection up, PUBLISH packets carrying node messages sealed by the real peer or a stranger:
//! address requests and replies, reverse requests with a genuine address of the peer, reverse
//! failures for the node's own tokens, raw and replayed envelopes, and raw bytes on the broker
//! connection); the STUN server (a genuine binding answer); raw datagrams on the PNP socket; the
//! dialler of every inbound connection (a genuine direct preface, a reverse one with one of the
//! node's tokens or a foreign one, or garbage), the TURN relay of phase C when the input
//! configures one (a scripted server: the 401 challenge, then authenticated successes for
//! Allocate, CreatePermission, Refresh and ConnectionBind; ConnectionAttempt indications for a
//! peer coming through; raw bytes on any relay connection), the dialler coming through the
//! relay (a genuine relay preface with the token of the node's relay offer, or any) and the far
//! end of every connection
//! (`common/channel_peer.rs`: the genuine peer's secure channel, or another identity, role or
//! context; whole, cut, bit-flipped, truncated or followed by junk; raw bytes); the API
//! (`connect` by the peer's key, its address with arbitrary endpoints, a name, or our own key;
//! `send`, `finish`, `close_stream`, `close`) and time steps.
//!
//! Checks besides the contract: transmits only on connected streams, valid MQTT to the broker
//! whose PUBLISHes open for the peer or the stranger; every connection the node dials starts
//! with a node preface; relay offers carry the relayed address the relay gave; `Connected` and
//! `Accepted` name the peer (the node takes streams only from it) and come only on a connection
//! whose bytes began with the genuine peer's whole handshake, with path `Relayed` exactly when
//! that connection came through the relay; `Data` only on such a stream and always a prefix of what the genuine peer sealed
//! there (attacker bytes are never delivered); a genuine peer fed by the node never fails and
//! sees the node's identity; `StreamClosed` once per stream; `Closed` exactly once, only after
//! `close`, and nothing after it.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_nat::{Filtering, Mapping, PortAllocation};
use p2pd_node::wire::{Message as NodeMessage, Preface, PrefaceKind, PREFACE_LEN, TOKEN_LEN};
use p2pd_node::{
    CredentialSource, Credentials, NatSource, Node, NodeApiError, NodeConfig, NodeEvent, Path, RelaySpec, StreamId,
    Target,
};
use p2pd_proto::stun::{attr as stun_attr, Attribute, Class, ErrorCode, Header, Message as Stun, MessageWriter, TransactionId};
use p2pd_turn::codec::{self as turn_codec, attr as turn_attr, method as turn_method, long_term_key, TurnAttribute, TurnWriter};
use p2pd_proto::testing::{pick, Driven, Output, SocketState, SocketTable};
use p2pd_proto::{Instant, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use p2pd_signaling::address::{Endpoint, Interface, InterfaceLabel};
use p2pd_signaling::envelope::NONCE_LEN;
use p2pd_signaling::mqtt::{encode, Packet, Protocol};
use p2pd_signaling::pnp::{Name, PnpClientConfig, PnpTransport};
use p2pd_signaling::rendezvous::payload::{self, Content};
use p2pd_signaling::rendezvous::{topic_for, BrokerSpec};
use p2pd_signaling::{seal, NatInfo, Opener, PeerAddress, RendezvousConfig};

#[path = "common/socket_fail.rs"]
mod socket_fail;
use socket_fail::Fail;

#[path = "common/broker_link.rs"]
mod broker_link;
use broker_link::BrokerLink;

#[path = "common/channel_peer.rs"]
#[allow(dead_code)]
mod channel_peer;
use channel_peer::{identity, public_key, Conn, Kind, Tamper};

const EPOCH_MS: u64 = 1_700_000_000_000;
/// The node, its peer (the only identity it takes streams from) and a stranger.
const ME: usize = 0;
const PEER: usize = 1;
const STRANGER: usize = 2;

fn broker() -> SocketAddr {
    "192.0.2.10:1883".parse().unwrap()
}

fn stun_server() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

fn pnp_server() -> SocketAddr {
    "192.0.2.30:5300".parse().unwrap()
}

fn relay_server() -> SocketAddr {
    "192.0.2.40:3478".parse().unwrap()
}

fn relayed() -> SocketAddr {
    "192.0.2.40:50000".parse().unwrap()
}

const RELAY_REALM: &str = "relay.fuzz";

fn relay_key() -> [u8; 16] {
    long_term_key(b"u", RELAY_REALM.as_bytes(), b"p")
}

fn local_ip() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
}

fn nat(which: u8) -> Option<NatInfo> {
    match which % 4 {
        0 => None,
        1 => Some(p2pd_node::ladder::OPEN),
        2 => Some(NatInfo {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            allocation: PortAllocation::Preserving,
        }),
        _ => Some(NatInfo {
            mapping: Mapping::AddressAndPortDependent,
            filtering: Filtering::AddressAndPortDependent,
            allocation: PortAllocation::Random,
        }),
    }
}

/// A node message over signaling.
#[derive(Arbitrary, Debug)]
enum Sig {
    AddressRequest { nonce: u64 },
    /// A reply with the peer's address (to one of the node's requests, or any nonce).
    AddressReply { ours: bool, nonce: u64, port: u16, nat: u8 },
    /// Dial me back (the peer's genuine address with an arbitrary endpoint).
    ReverseRequest { token: u8, port: u16, nat: u8 },
    /// No dial reached you (for one of the node's tokens, or any).
    ReverseFailed { ours: bool, token: u8 },
    /// Any bytes behind the node's tag.
    Raw(Vec<u8>),
    /// Any bytes behind the punch's tag.
    PunchRaw(Vec<u8>),
    /// An earlier sealed envelope again.
    Copy { which: u8 },
}

#[derive(Arbitrary, Debug)]
enum Tgt {
    Key,
    /// The peer's address with one endpoint (its port; the IP picked by `ip`).
    Address { ip: u8, port: u16, nat: u8 },
    Name,
    Myself,
    Stranger,
}

#[derive(Arbitrary, Debug)]
enum PrefaceMode {
    /// A direct preface (the dialler initiates).
    Direct { token: u8 },
    /// A reverse preface with one of the node's reverse tokens (or any).
    Reverse { ours: bool, token: u8 },
    /// A relay preface with the token of one of the node's relay offers (or any).
    Relay { ours: bool, token: u8 },
    /// Anything.
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Everything pending goes well: binds, connects, the broker, the STUN binding.
    Settle,
    BindResult { which: u8, fail: Option<Fail> },
    ConnectResult { which: u8, fail: Option<Fail> },
    /// The listener's outstanding accept gets a connection (or fails).
    Accept { remote: u8, fail: Option<Fail> },
    StreamEnd { which: u8, fail: Option<Fail> },
    Writable { which: u8 },
    /// An outcome for an id the runtime does not hold.
    Wild { id: u32, kind: u8 },
    /// An inbound connection's dialler sends its preface, cut in two.
    Preface { which: u8, mode: PrefaceMode, cut: u8 },
    /// The far end of a connection speaks (everything its channel wrote since it last spoke,
    /// maybe `data` sealed bytes and its FINISH), tampered with as asked, cut in two.
    Speak { which: u8, kind: Kind, data: u16, finish: bool, tamper: Tamper, cut: u16 },
    /// Raw bytes on any stream.
    Bytes { which: u8, data: Vec<u8> },
    /// Raw bytes on the broker connection.
    BrokerBytes(Vec<u8>),
    /// A node message over signaling, from the peer (or the stranger), cut in two.
    Signal { sig: Sig, stranger: bool, cut: u16 },
    /// A datagram on the PNP socket.
    Datagram(Vec<u8>),
    /// The relay answers every request it has (see [`H::relay_serve`]).
    RelayServe,
    /// The relay tells of a peer's connection to the relayed address (on its control
    /// connection).
    RelayAttempt { port: u16 },
    /// Raw bytes on a relay connection (control or data, before the hand-over).
    RelayBytes { which: u8, data: Vec<u8> },
    /// A whole relayed connect: the node (with a relay) connects to an unpunchable peer, the
    /// relay allocates, the offer goes out, the peer comes through and runs its handshake.
    HappyRelay { port: u16 },
    Connect(Tgt),
    /// A whole connect as a friendly world plays it: the node is settled, connects to the
    /// peer's address (open, one endpoint), the connection comes up, the genuine peer answers.
    Happy { port: u16 },
    /// A whole inbound stream: an accept, a direct preface, the genuine peer's handshake and
    /// some data.
    HappyInbound { remote: u8 },
    /// A whole reverse dial: the peer's reverse request, the node's dial comes up, the genuine
    /// peer initiates and sends data.
    HappyReverse { token: u8, port: u16 },
    Send { which: u8, len: u16 },
    Finish { which: u8 },
    CloseStream { which: u8 },
    Advance { ms: u16 },
    ToDeadline { extra_ms: u8 },
    Jump { secs: u8 },
    Close,
}

#[derive(Arbitrary, Debug)]
struct Input {
    seed: u64,
    nat: u8,
    relay: bool,
    ops: Vec<Op>,
}

/// A connection of the node's to the relay, before it is handed over as a data connection.
#[derive(Default)]
struct RelaySock {
    /// Its first request was an Allocate.
    control: bool,
    /// Request bytes not yet a whole message.
    buf: Vec<u8>,
    /// Answers to deliver (the relay speaks when told to).
    answers: Vec<Vec<u8>>,
    /// A ConnectionBind success is among the answers: the peer this connection carries after.
    binds_to: Option<SocketAddr>,
}


/// One connection of the node's own (dialled or accepted) and its far end.
struct Track {
    /// The node dialled it (it writes the preface).
    outbound: bool,
    /// The node's bytes before the far end exists (its preface).
    pre: Vec<u8>,
    /// The dialler's preface went out (inbound).
    prefaced: bool,
    conn: Option<Conn>,
    remote: SocketAddr,
    stream: Option<StreamId>,
    /// Handed over by the relay.
    relayed: bool,
}

#[derive(Default)]
struct StreamTrack {
    socket: Option<SocketId>,
    received: Vec<u8>,
    closed: bool,
}

struct H {
    d: Driven<Node>,
    t: SocketTable,
    link: BrokerLink,
    /// Sockets by role, learnt from their intents.
    listener: Option<SocketId>,
    stun: Option<SocketId>,
    stun_request: Option<TransactionId>,
    pnp: Option<SocketId>,
    tracks: HashMap<SocketId, Track>,
    /// Connects asked for before the bind was answered.
    pending_connects: HashMap<SocketId, SocketAddr>,
    streams: HashMap<StreamId, StreamTrack>,
    /// The node's reverse tokens and address-request nonces, from its signals.
    tokens: Vec<[u8; TOKEN_LEN]>,
    nonces: Vec<u64>,
    sealed: Vec<Vec<u8>>,
    counter: u32,
    closing: bool,
    closed: bool,
    next_remote: u16,
    relay_socks: HashMap<SocketId, RelaySock>,
    /// The node's relay-offer tokens, from its signals.
    relay_tokens: Vec<[u8; TOKEN_LEN]>,
    /// Connection attempts announced: connection id -> peer.
    attempts: HashMap<u32, SocketAddr>,
    next_cid: u32,
    relay_on: bool,
}

impl H {
    fn check(&mut self) {
        for out in self.d.take().into_outputs() {
            match out {
                Output::Transmit(t, bytes) => self.transmit(t.socket, t.destination, &bytes),
                Output::Op(op) => self.op(op),
                Output::Event(ev) => self.event(ev),
            }
        }
    }

    fn transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: &[u8]) {
        if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
            eprintln!("DEBUG transmit {socket} {} bytes", bytes.len());
        }
        match self.t.get(socket) {
            Some(SocketState::Stream { remote, shut, .. }) => {
                assert!(!shut, "transmit on {socket} after its Shutdown");
                assert_eq!(destination, remote);
            }
            Some(SocketState::Bound { transport: Transport::Udp, .. }) => {
                assert_eq!(Some(socket), self.pnp, "a datagram from a socket that is not the PNP client's");
                return;
            }
            other => panic!("transmit on {socket} in state {other:?}"),
        }
        if self.link.socket == Some(socket) {
            self.broker_reads(socket, bytes);
            return;
        }
        if self.relay_socks.contains_key(&socket) {
            self.relay_reads(socket, bytes);
            return;
        }
        if self.stun == Some(socket) {
            if let Ok(m) = Stun::decode(bytes) {
                if m.class() == Class::Request {
                    self.stun_request = Some(m.transaction_id());
                }
            }
            return;
        }
        let now = self.d.now;
        let Some(track) = self.tracks.get_mut(&socket) else { return };
        let mut rest = bytes;
        if track.conn.is_none() && track.outbound {
            let want = PREFACE_LEN.saturating_sub(track.pre.len()).min(rest.len());
            track.pre.extend_from_slice(&rest[..want]);
            rest = &rest[want..];
            if track.pre.len() < PREFACE_LEN {
                return;
            }
            let preface = Preface::decode(track.pre.as_slice().try_into().unwrap());
            match preface {
                Some(p) => {
                    // The node initiates a direct connection; on a reverse one (answering the
                    // peer's request) the peer initiates.
                    let leads = p.kind == PrefaceKind::Direct;
                    track.conn = Some(Conn::new(p.context(), leads, Some(PEER), ME));
                }
                None => {
                    // Not a node connection (a punch child's): no far end here.
                    self.tracks.remove(&socket);
                    return;
                }
            }
        }
        if rest.is_empty() {
            return;
        }
        let Some(track) = self.tracks.get_mut(&socket) else { return };
        match &mut track.conn {
            Some(conn) => conn.machine_wrote(now, rest),
            None => assert!(track.prefaced || track.outbound, "the node wrote on {socket} before the dialler's preface"),
        }
    }

    fn broker_reads(&mut self, socket: SocketId, bytes: &[u8]) {
        assert_eq!(self.link.socket, Some(socket));
        for p in self.link.read(bytes) {
            if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
                eprintln!("DEBUG broker got {}", format!("{p:?}").chars().take(80).collect::<String>());
            }
            match p {
                Packet::Publish { topic, payload, .. } => {
                    let to = [PEER, STRANGER]
                        .into_iter()
                        .find(|&k| topic == topic_for(&identity(k).node_id()))
                        .expect("a message to a known key");
                    let mut opener = Opener::with_window(4, u64::MAX / 4, u64::MAX / 4);
                    let opened = opener.open(identity(to), 0, &payload).expect("the node's envelope opens for its recipient");
                    let Ok(Content::Message { payload, .. }) = payload::parse(&opened.payload) else {
                        continue;
                    };
                    match payload.first() {
                        Some(&p2pd_node::wire::TAG) => {
                            let m = NodeMessage::decode(payload).expect("the node's messages decode");
                            if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
                                eprintln!("DEBUG signal {m:?}");
                            }
                            match m {
                                NodeMessage::AddressRequest { nonce } if self.nonces.len() < 16 => self.nonces.push(nonce),
                                NodeMessage::ReverseRequest { token, address } => {
                                    assert_eq!(address.public_key, public_key(ME), "a reverse request with another's address");
                                    if self.tokens.len() < 16 {
                                        self.tokens.push(token);
                                    }
                                }
                                NodeMessage::RelayOffer { token, relayed: at } => {
                                    assert!(self.relay_on, "a relay offer without a relay");
                                    assert_eq!(at, relayed(), "an offer of another address than the relay gave");
                                    if self.relay_tokens.len() < 16 {
                                        self.relay_tokens.push(token);
                                    }
                                }
                                _ => {}
                            }
                        }
                        Some(&p2pd_punch::message::TAG) => {}
                        other => panic!("a message with tag {other:?}"),
                    }
                }
                Packet::PubAck { .. } | Packet::Disconnect => {}
                other => panic!("the node sent a broker's packet: {other:?}"),
            }
        }
    }

    fn op(&mut self, op: SocketOp) {
        if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
            eprintln!("DEBUG op {op:?}");
        }
        assert!(!self.closed, "{op:?} after Closed");
        let socket = op.socket();
        let before = self.t.apply(&op);
        match op {
            SocketOp::Bind { transport: Transport::Udp, .. } => self.pnp = Some(socket),
            SocketOp::Bind { .. } => {
                self.tracks.remove(&socket);
                self.relay_socks.remove(&socket);
                if self.link.socket == Some(socket) {
                    self.link.socket = None;
                }
                if self.stun == Some(socket) {
                    self.stun = None;
                }
            }
            SocketOp::Connect { remote, .. } => {
                // A Connect right behind its Bind is allowed (the runtime runs intents in order);
                // the node itself waits for Bound.
                match before {
                    Some(SocketState::Bound { .. }) => {}
                    Some(SocketState::Binding { transport: Transport::Tcp, .. }) => {
                        self.pending_connects.insert(socket, remote);
                    }
                    _ => panic!("connect on {socket} in state {before:?}"),
                }
                if remote == broker() {
                    self.link = BrokerLink::new(socket, self.link.next_pkid);
                } else if remote == stun_server() {
                    if self.stun.is_none() {
                        self.stun = Some(socket);
                        self.stun_request = None;
                    }
                } else if remote == relay_server() {
                    assert!(self.relay_on, "a connection to a relay that is not configured");
                    self.relay_socks.insert(socket, RelaySock::default());
                } else {
                    self.tracks.insert(socket, Track { outbound: true, pre: Vec::new(), prefaced: false, conn: None, remote, stream: None, relayed: false });
                }
            }
            SocketOp::Listen { .. } => {
                assert!(matches!(before, Some(SocketState::Bound { .. })), "listen on {socket} in state {before:?}");
                if self.listener.is_none() {
                    self.listener = Some(socket);
                }
            }
            SocketOp::Accept { listener, .. } => {
                assert!(matches!(self.t.get(listener), Some(SocketState::Listening { .. })), "accept on {listener} which does not listen");
            }
            SocketOp::Shutdown { .. } => assert!(matches!(before, Some(SocketState::Stream { .. }))),
            SocketOp::Close { .. } => {
                self.tracks.remove(&socket);
                self.relay_socks.remove(&socket);
                self.pending_connects.remove(&socket);
                if self.link.socket == Some(socket) {
                    self.link.socket = None;
                }
                if self.stun == Some(socket) {
                    self.stun = None;
                }
                if self.listener == Some(socket) {
                    self.listener = None;
                }
                if self.pnp == Some(socket) {
                    self.pnp = None;
                }
            }
            SocketOp::SetTtl { .. } => {}
            other => panic!("unexpected intent {other:?}"),
        }
    }

    /// The connection a new stream runs on: the one to `remote` whose far end is the genuine
    /// peer with its whole handshake delivered and no stream yet.
    fn winner(&self, remote: SocketAddr) -> Option<SocketId> {
        let mut found: Vec<SocketId> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.remote == remote && t.stream.is_none() && t.conn.as_ref().is_some_and(|c| c.may_win()))
            .map(|(s, _)| *s)
            .collect();
        found.sort();
        found.first().copied()
    }

    fn new_stream(&mut self, stream: StreamId, peer: p2pd_signaling::PublicKey, path: Path, remote: SocketAddr) {
        assert!(!self.closing, "a stream after close");
        assert_eq!(peer, public_key(PEER), "a stream with another identity than the peer's");
        assert!(matches!(path, Path::Direct | Path::Reverse | Path::Relayed), "path {path:?} without a punch peer");
        let socket = self
            .winner(remote)
            .unwrap_or_else(|| panic!("{stream} to {remote} on no connection whose bytes began with the genuine peer's handshake"));
        let relayed = self.tracks.get(&socket).is_some_and(|t| t.relayed);
        assert_eq!(relayed, path == Path::Relayed, "{stream} on {socket} reported {path:?}");
        assert!(!self.streams.contains_key(&stream), "{stream} reported twice");
        if let Some(t) = self.tracks.get_mut(&socket) {
            t.stream = Some(stream);
        }
        self.streams.insert(stream, StreamTrack { socket: Some(socket), ..StreamTrack::default() });
        if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
            eprintln!("DEBUG stream {stream} {path:?}");
        }
    }

    fn event(&mut self, ev: NodeEvent) {
        if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
            eprintln!("DEBUG event {ev:?}");
        }
        assert!(!self.closed, "{ev:?} after Closed");
        match ev {
            NodeEvent::Connected { stream, peer, path, remote, .. } => self.new_stream(stream, peer, path, remote),
            NodeEvent::Accepted { stream, peer, path, remote } => self.new_stream(stream, peer, path, remote),
            NodeEvent::Data { stream, bytes } => {
                assert!(!bytes.is_empty());
                if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
                    eprintln!("DEBUG data {stream} {}", bytes.len());
                }
                let s = self.streams.get_mut(&stream).expect("Data on an unknown stream");
                s.received.extend_from_slice(&bytes);
                let track = s.socket.and_then(|sock| self.tracks.get(&sock));
                if let Some(sp) = track.and_then(|t| t.conn.as_ref()).and_then(|c| c.speaker.as_ref()) {
                    assert!(sp.sealed.starts_with(&s.received), "Data the genuine peer did not seal");
                }
            }
            NodeEvent::StreamClosed { stream } => {
                let s = self.streams.get_mut(&stream).expect("StreamClosed for an unknown stream");
                assert!(!s.closed, "two StreamClosed");
                s.closed = true;
            }
            NodeEvent::PeerFinished { stream } | NodeEvent::Finished { stream } | NodeEvent::Writable { stream } => {
                assert!(self.streams.contains_key(&stream), "an event for an unknown stream");
            }
            NodeEvent::StreamFailed { stream, .. } => assert!(self.streams.contains_key(&stream)),
            NodeEvent::Closed => {
                assert!(self.closing, "Closed without close");
                self.closed = true;
            }
            _ => {}
        }
    }

    fn outcome(&mut self, socket: SocketId, outcome: SocketOutcome) {
        if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
            eprintln!("DEBUG outcome {socket} {outcome:?}");
        }
        self.t.outcome(socket, &outcome);
        if let Some(remote) = self.pending_connects.remove(&socket) {
            if matches!(outcome, SocketOutcome::Bound { .. }) {
                let _ = self.t.apply(&SocketOp::Connect { socket, remote });
            }
        }
        self.d.outcome(socket, outcome);
        self.check();
        self.check_speakers();
    }

    fn check_speakers(&self) {
        for t in self.tracks.values() {
            if let Some(c) = &t.conn {
                c.check_speaker();
            }
        }
    }

    fn stream(&mut self, socket: SocketId, data: &[u8]) {
        if data.is_empty() || !matches!(self.t.get(socket), Some(SocketState::Stream { .. })) {
            return;
        }
        let _ = self.d.stream(socket, data);
        self.check();
        self.check_speakers();
    }

    fn advance(&mut self, to: Instant) {
        self.d.advance_to(to);
        self.check();
        self.check_speakers();
    }

    fn fail(op: OpKind, f: Fail) -> SocketOutcome {
        SocketOutcome::Failed { op, destination: None, error: f.io() }
    }

    fn broker_sends(&mut self, packet: Packet) {
        let Some(socket) = self.link.socket else { return };
        let mut wire = Vec::new();
        encode(&packet, Protocol::V311, &mut wire).unwrap();
        self.stream(socket, &wire);
    }

    fn settle(&mut self) {
        for _ in 0..8 {
            let mut progressed = false;
            // Timers due now (a stream's written bytes settle at once, and more follow).
            if self.d.deadline().is_some_and(|d| d <= self.d.now) {
                self.advance(self.d.now);
                progressed = true;
            }
            for socket in self.t.ids(|s| matches!(s, SocketState::Binding { .. })) {
                if let Some(SocketState::Binding { local, .. }) = self.t.get(socket) {
                    let local = SocketAddr::new(local_ip(), local.port().max(40_000));
                    self.outcome(socket, SocketOutcome::Bound { local });
                    progressed = true;
                }
            }
            for socket in self.t.ids(|s| matches!(s, SocketState::Connecting { .. })) {
                let Some(SocketState::Connecting { local, remote }) = self.t.get(socket) else { continue };
                if remote == broker() || remote == stun_server() || remote == relay_server() {
                    self.outcome(socket, SocketOutcome::Connected { local, remote });
                    progressed = true;
                }
            }
            if let Some(socket) = self.link.socket.filter(|s| matches!(self.t.get(*s), Some(SocketState::Stream { .. }))) {
                let _ = socket;
                if let Some(answer) = self.link.next_answer() {
                    self.broker_sends(answer);
                    progressed = true;
                }
            }
            if self.relay_socks.values().any(|r| !r.answers.is_empty()) {
                self.relay_serve();
                progressed = true;
            }
            if let (Some(socket), Some(id)) = (self.stun, self.stun_request.take()) {
                let mut buf = [0u8; 256];
                let mut w = MessageWriter::new(&mut buf, Header::new(Class::Success, p2pd_proto::stun::Method::BINDING, id)).unwrap();
                let mapped = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 40_000);
                w.add(&Attribute::XorMappedAddress(mapped)).unwrap();
                let n = w.finish();
                self.stream(socket, &buf[..n]);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn peer_address(&self, ip: u8, port: u16, nat_kind: u8) -> PeerAddress {
        let ip = match ip % 3 {
            0 => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 50)),
            1 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
            _ => "2001:db8::5".parse().unwrap(),
        };
        PeerAddress {
            public_key: public_key(PEER),
            interfaces: vec![Interface { label: InterfaceLabel::Unnamed, nat: nat(nat_kind), endpoints: vec![Endpoint { ip, port: port.max(1) }] }],
            brokers: self.d.machine.rendezvous().broker_ids().collect(),
        }
    }

    fn signal(&mut self, sig: Sig, stranger: bool, cut: u16) {
        let payload = match sig {
            Sig::AddressRequest { nonce } => NodeMessage::AddressRequest { nonce }.encode(),
            Sig::AddressReply { ours, nonce, port, nat } => {
                let nonce = if ours { self.nonces.last().copied().unwrap_or(nonce) } else { nonce };
                NodeMessage::AddressReply { nonce, address: Box::new(self.peer_address(0, port, nat)) }.encode()
            }
            Sig::ReverseRequest { token, port, nat } => {
                NodeMessage::ReverseRequest { token: [token; TOKEN_LEN], address: Box::new(self.peer_address(0, port, nat)) }.encode()
            }
            Sig::ReverseFailed { ours, token } => {
                let token = if ours { self.tokens.last().copied().unwrap_or([token; TOKEN_LEN]) } else { [token; TOKEN_LEN] };
                NodeMessage::ReverseFailed { token }.encode()
            }
            Sig::Raw(mut bytes) => {
                bytes.truncate(300);
                bytes.insert(0, p2pd_node::wire::TAG);
                bytes
            }
            Sig::PunchRaw(mut bytes) => {
                bytes.truncate(300);
                bytes.insert(0, p2pd_punch::message::TAG);
                bytes
            }
            Sig::Copy { which } => {
                let Some(envelope) = self.sealed.get(usize::from(which) % self.sealed.len().max(1)).cloned() else { return };
                self.publish(envelope, cut);
                return;
            }
        };
        if self.sealed.len() >= 16 {
            return;
        }
        self.counter += 1;
        let mut nonce = [0x33; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.counter.to_be_bytes());
        let from = if stranger { STRANGER } else { PEER };
        let content = payload::message(&payload, false);
        let unix_ms = self.d.machine.rendezvous().unix_ms(self.d.now);
        let envelope = seal(identity(from), &public_key(ME), unix_ms, nonce, &content).unwrap();
        self.sealed.push(envelope.clone());
        self.publish(envelope, cut);
    }

    /// The broker delivers `envelope` on the node's topic, cut in two.
    fn publish(&mut self, envelope: Vec<u8>, cut: u16) {
        let Some(socket) = self.link.socket else { return };
        let wire = self.link.publish_wire(topic_for(&identity(ME).node_id()), envelope);
        let cut = usize::from(cut) % (wire.len() + 1);
        self.stream(socket, &wire[..cut]);
        if self.link.socket == Some(socket) {
            self.stream(socket, &wire[cut..]);
        }
    }

    /// The node wrote on a relay connection: answer each whole request (queued until the relay
    /// is told to speak).
    fn relay_reads(&mut self, socket: SocketId, bytes: &[u8]) {
        let Some(sock) = self.relay_socks.get_mut(&socket) else { return };
        sock.buf.extend_from_slice(bytes);
        loop {
            let Some(len) = sock.buf.get(2..4).map(|l| 20 + usize::from(u16::from_be_bytes([l[0], l[1]]))) else { break };
            if sock.buf.len() < len {
                break;
            }
            let request: Vec<u8> = sock.buf.drain(..len).collect();
            let msg = Stun::decode(&request).expect("the node's TURN client sends well-formed STUN");
            assert_eq!(msg.class(), Class::Request, "the TURN client only sends requests");
            if sock.answers.is_empty() && msg.method() == turn_method::ALLOCATE {
                sock.control = true;
            }
            let (answer, binds_to) = relay_answer(&msg, &self.attempts);
            if std::env::var_os("NODE_FUZZ_DEBUG").is_some() {
                eprintln!("DEBUG relay {socket} {:?} -> {binds_to:?} {:?}", msg.method(), Stun::decode(&answer).map(|a| a.class()));
            }
            if binds_to.is_some() {
                sock.binds_to = binds_to;
            }
            if sock.answers.len() < 16 {
                sock.answers.push(answer);
            }
        }
    }

    /// The relay delivers every queued answer; a connection whose ConnectionBind succeeded is
    /// the peer's from then on (its preface comes next).
    fn relay_serve(&mut self) {
        let mut ids: Vec<SocketId> = self.relay_socks.keys().copied().collect();
        ids.sort();
        for socket in ids {
            let Some(sock) = self.relay_socks.get_mut(&socket) else { continue };
            let answers = std::mem::take(&mut sock.answers);
            let binds_to = sock.binds_to.take();
            for a in answers {
                self.stream(socket, &a);
            }
            if binds_to.is_some() {
                if self.relay_socks.remove(&socket).is_some() && matches!(self.t.get(socket), Some(SocketState::Stream { .. })) {
                    self.tracks.insert(socket, Track { outbound: false, pre: Vec::new(), prefaced: false, conn: None, remote: relay_server(), stream: None, relayed: true });
                }
            }
        }
    }

    /// A ConnectionAttempt indication on the relay's control connection.
    fn relay_attempt(&mut self, port: u16) {
        let Some(control) = self.relay_socks.iter().filter(|(_, r)| r.control).map(|(s, _)| *s).min() else { return };
        if self.attempts.len() >= 16 {
            return;
        }
        self.next_cid = self.next_cid.wrapping_add(1);
        let cid = self.next_cid;
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 50)), port.max(1));
        self.attempts.insert(cid, peer);
        let header = Header::new(Class::Indication, turn_method::CONNECTION_ATTEMPT, TransactionId::new([cid as u8; 12]));
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add_turn(&header, &TurnAttribute::ConnectionId(cid)).unwrap();
        w.add_turn(&header, &TurnAttribute::XorPeerAddress(peer)).unwrap();
        let n = w.finish();
        self.stream(control, &buf[..n]);
    }

    /// Connections of the node's own that are streams.
    fn own_streams(&self) -> Vec<SocketId> {
        let mut v: Vec<SocketId> = self
            .tracks
            .keys()
            .copied()
            .filter(|s| matches!(self.t.get(*s), Some(SocketState::Stream { .. })))
            .collect();
        v.sort();
        v
    }

    fn accept(&mut self, remote: u8, fail: Option<Fail>) -> Option<SocketId> {
        let socket = self.t.pick(|s| matches!(s, SocketState::Accepting { .. }), 0)?;
        let Some(SocketState::Accepting { listener }) = self.t.get(socket) else { return None };
        let local = match self.t.get(listener) {
            Some(SocketState::Listening { local }) => local,
            _ => SocketAddr::new(local_ip(), 1),
        };
        match fail {
            None => {
                self.next_remote = self.next_remote.wrapping_add(1);
                let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + remote % 8)), 20_000 + self.next_remote % 40_000);
                self.tracks.insert(socket, Track { outbound: false, pre: Vec::new(), prefaced: false, conn: None, remote, stream: None, relayed: false });
                self.outcome(socket, SocketOutcome::Accepted { local, remote });
                Some(socket)
            }
            Some(f) => {
                self.outcome(socket, Self::fail(OpKind::Accept, f));
                None
            }
        }
    }

    fn preface(&mut self, socket: SocketId, mode: PrefaceMode, cut: u8) {
        let Some(track) = self.tracks.get_mut(&socket) else { return };
        if track.outbound || track.prefaced {
            return;
        }
        track.prefaced = true;
        let bytes = match mode {
            PrefaceMode::Direct { token } => {
                let p = Preface { kind: PrefaceKind::Direct, token: [token; TOKEN_LEN] };
                // The dialler initiates.
                track.conn = Some(Conn::new(p.context(), false, Some(PEER), ME));
                p.encode().to_vec()
            }
            PrefaceMode::Reverse { ours, token } => {
                let token = if ours { self.tokens.last().copied().unwrap_or([token; TOKEN_LEN]) } else { [token; TOKEN_LEN] };
                let p = Preface { kind: PrefaceKind::Reverse, token };
                // The node (the requester) initiates.
                track.conn = Some(Conn::new(p.context(), true, Some(PEER), ME));
                p.encode().to_vec()
            }
            PrefaceMode::Relay { ours, token } => {
                let token = if ours { self.relay_tokens.last().copied().unwrap_or([token; TOKEN_LEN]) } else { [token; TOKEN_LEN] };
                let p = Preface { kind: PrefaceKind::Relay, token };
                // The node (the offerer) initiates.
                track.conn = Some(Conn::new(p.context(), true, Some(PEER), ME));
                p.encode().to_vec()
            }
            PrefaceMode::Garbage(mut g) => {
                g.truncate(64);
                g
            }
        };
        let cut = usize::from(cut) % (bytes.len() + 1);
        self.stream(socket, &bytes[..cut]);
        self.stream(socket, &bytes[cut..]);
    }

    fn speak(&mut self, socket: SocketId, kind: Kind, data: u16, finish: bool, tamper: &Tamper, cut: u16) {
        self.counter += 1;
        let (now, counter) = (self.d.now, self.counter);
        let Some(conn) = self.tracks.get_mut(&socket).and_then(|t| t.conn.as_mut()) else { return };
        let Some(speaker) = conn.speaker(now, kind, counter) else { return };
        if data > 0 || finish {
            let bytes: Vec<u8> = (0..usize::from(data % 2048)).map(|i| (i as u32 ^ counter).wrapping_mul(31) as u8).collect();
            speaker.seal(now, &bytes, finish);
        }
        conn.check_speaker();
        let delivery = conn.deliver(tamper);
        let bytes = delivery.bytes;
        if bytes.is_empty() {
            return;
        }
        let cut = usize::from(cut) % (bytes.len() + 1);
        for part in [&bytes[..cut], &bytes[cut..]] {
            if part.is_empty() || !matches!(self.t.get(socket), Some(SocketState::Stream { .. })) {
                continue;
            }
            if let Some(c) = self.tracks.get_mut(&socket).and_then(|t| t.conn.as_mut()) {
                c.handed(part);
            }
            self.stream(socket, part);
        }
    }

    fn pick_stream(&self, which: u8) -> Option<StreamId> {
        let mut ids: Vec<StreamId> = self.streams.keys().copied().collect();
        ids.sort();
        pick(&ids, which)
    }

    fn api<R>(&mut self, f: impl FnOnce(&mut Node, Instant) -> Result<R, NodeApiError>) -> Result<R, NodeApiError> {
        let r = self.d.input(f);
        if self.closing {
            assert!(matches!(r, Err(NodeApiError::Closed) | Err(NodeApiError::UnknownStream)), "a call after close was taken");
        }
        self.check();
        self.check_speakers();
        r
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Settle => self.settle(),
            Op::BindResult { which, fail } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Binding { .. }), which) else { return };
                let Some(SocketState::Binding { local, .. }) = self.t.get(socket) else { return };
                let outcome = match fail {
                    None => SocketOutcome::Bound { local: SocketAddr::new(local_ip(), local.port().max(1)) },
                    Some(f) => Self::fail(OpKind::Bind, f),
                };
                self.outcome(socket, outcome);
            }
            Op::ConnectResult { which, fail } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Connecting { .. }), which) else { return };
                let Some(SocketState::Connecting { local, remote }) = self.t.get(socket) else { return };
                let outcome = match fail {
                    None => SocketOutcome::Connected { local, remote },
                    Some(f) => Self::fail(OpKind::Connect, f),
                };
                self.outcome(socket, outcome);
            }
            Op::Accept { remote, fail } => {
                let _ = self.accept(remote, fail);
            }
            Op::StreamEnd { which, fail } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Stream { .. }), which) else { return };
                let outcome = match fail {
                    None => SocketOutcome::PeerClosed,
                    Some(f) => Self::fail(OpKind::Receive, f),
                };
                self.outcome(socket, outcome);
            }
            Op::Writable { which } => {
                let Some(socket) = self.t.pick(|s| matches!(s, SocketState::Stream { .. }), which) else { return };
                self.outcome(socket, SocketOutcome::Writable);
            }
            Op::Wild { id, kind } => {
                // An outcome for a socket the runtime does not hold (never opened, or closed):
                // the machine must ignore it.
                let socket = SocketId(id % 64);
                if self.t.get(socket).is_some() {
                    return;
                }
                let outcome = match kind % 6 {
                    0 => SocketOutcome::PeerClosed,
                    1 => SocketOutcome::Bound { local: SocketAddr::new(local_ip(), 9) },
                    2 => Self::fail(OpKind::Receive, Fail::Reset),
                    3 => Self::fail(OpKind::Send, Fail::Reset),
                    4 => SocketOutcome::Writable,
                    _ => Self::fail(OpKind::Bind, Fail::InUse),
                };
                self.d.outcome(socket, outcome);
                self.check();
            }
            Op::Preface { which, mode, cut } => {
                let Some(socket) = pick(&self.own_streams(), which) else { return };
                self.preface(socket, mode, cut);
            }
            Op::Speak { which, kind, data, finish, tamper, cut } => {
                let Some(socket) = pick(&self.own_streams(), which) else { return };
                self.speak(socket, kind, data, finish, &tamper, cut);
            }
            Op::Bytes { which, data } => {
                let ids = self.t.ids(|s| matches!(s, SocketState::Stream { .. }));
                let Some(socket) = pick(&ids, which) else { return };
                if data.is_empty() {
                    return;
                }
                // Attacker bytes: never delivered as Data (see `event`).
                if let Some(c) = self.tracks.get_mut(&socket).and_then(|t| t.conn.as_mut()) {
                    c.handed(&data);
                } else if let Some(t) = self.tracks.get_mut(&socket) {
                    t.prefaced = true;
                }
                self.stream(socket, &data);
            }
            Op::BrokerBytes(data) => {
                if let Some(socket) = self.link.socket {
                    self.stream(socket, &data);
                }
            }
            Op::Signal { sig, stranger, cut } => self.signal(sig, stranger, cut),
            Op::Datagram(data) => {
                let Some(socket) = self.pnp else { return };
                if matches!(self.t.get(socket), Some(SocketState::Bound { .. })) && !data.is_empty() {
                    let _ = self.d.datagram(socket, pnp_server(), &data);
                    self.check();
                }
            }
            Op::RelayServe => self.relay_serve(),
            Op::RelayAttempt { port } => self.relay_attempt(port),
            Op::RelayBytes { which, data } => {
                let mut ids: Vec<SocketId> = self.relay_socks.keys().copied().collect();
                ids.sort();
                let Some(socket) = pick(&ids, which) else { return };
                if !data.is_empty() {
                    self.stream(socket, &data);
                }
            }
            Op::HappyRelay { port } => {
                self.settle();
                let address = self.peer_address(0, port, 3);
                if self.api(|n, now| n.connect(now, Target::Address(Box::new(address)))).is_err() {
                    return;
                }
                for _ in 0..4 {
                    self.settle();
                }
                self.relay_attempt(port);
                for _ in 0..3 {
                    self.settle();
                }
                let fresh: Vec<SocketId> = self.tracks.iter().filter(|(_, t)| t.relayed && !t.prefaced).map(|(s, _)| *s).collect();
                for socket in fresh {
                    self.preface(socket, PrefaceMode::Relay { ours: true, token: 0 }, 3);
                    for _ in 0..2 {
                        self.speak(socket, Kind::Genuine, 0, false, &Tamper::None, u16::MAX);
                    }
                    self.speak(socket, Kind::Genuine, 200, false, &Tamper::None, 11);
                }
            }
            Op::Connect(tgt) => {
                let target = match tgt {
                    Tgt::Key => Target::Key(public_key(PEER)),
                    Tgt::Address { ip, port, nat } => Target::Address(Box::new(self.peer_address(ip, port, nat))),
                    Tgt::Name => Target::Name(Name::new("bob").unwrap()),
                    Tgt::Myself => Target::Key(public_key(ME)),
                    Tgt::Stranger => Target::Key(public_key(STRANGER)),
                };
                let myself = target == Target::Key(public_key(ME));
                let r = self.api(|n, now| n.connect(now, target));
                if myself {
                    assert!(r.is_err(), "a connect to ourselves was taken");
                }
            }
            Op::Happy { port } => {
                self.settle();
                let address = self.peer_address(0, port, 1);
                if self.api(|n, now| n.connect(now, Target::Address(Box::new(address)))).is_err() {
                    return;
                }
                self.settle();
                for _ in 0..3 {
                    let connecting = self.t.ids(|s| matches!(s, SocketState::Connecting { .. }));
                    for socket in connecting {
                        self.run(Op::ConnectResult { which: 0, fail: None });
                        let _ = socket;
                    }
                    for socket in self.own_streams() {
                        self.speak(socket, Kind::Genuine, 0, false, &Tamper::None, u16::MAX);
                    }
                }
                for socket in self.own_streams() {
                    self.speak(socket, Kind::Genuine, 100, false, &Tamper::None, 50);
                }
            }
            Op::HappyReverse { token, port } => {
                self.settle();
                self.signal(Sig::ReverseRequest { token, port, nat: 1 }, false, u16::MAX);
                self.settle();
                for _ in 0..2 {
                    self.run(Op::ConnectResult { which: 0, fail: None });
                    for socket in self.own_streams() {
                        self.speak(socket, Kind::Genuine, 0, false, &Tamper::None, u16::MAX);
                    }
                }
                for socket in self.own_streams() {
                    self.speak(socket, Kind::Genuine, 100, true, &Tamper::None, 7);
                }
            }
            Op::HappyInbound { remote } => {
                self.settle();
                let Some(socket) = self.accept(remote, None) else { return };
                self.preface(socket, PrefaceMode::Direct { token: remote }, 255);
                for _ in 0..2 {
                    self.speak(socket, Kind::Genuine, 0, false, &Tamper::None, u16::MAX);
                }
                self.speak(socket, Kind::Genuine, 300, true, &Tamper::None, 9);
            }
            Op::Send { which, len } => {
                let Some(stream) = self.pick_stream(which) else { return };
                self.counter += 1;
                let bytes: Vec<u8> = (0..usize::from(len) * 4).map(|i| (i as u32 ^ self.counter) as u8).collect();
                if let Ok(taken) = self.api(|n, now| n.send(now, stream, &bytes)) {
                    assert!(taken <= bytes.len());
                }
            }
            Op::Finish { which } => {
                let Some(stream) = self.pick_stream(which) else { return };
                let _ = self.api(|n, now| n.finish(now, stream));
            }
            Op::CloseStream { which } => {
                let Some(stream) = self.pick_stream(which) else { return };
                let closed = self.streams.get(&stream).is_some_and(|s| s.closed);
                let r = self.api(|n, now| n.close_stream(now, stream));
                if closed {
                    assert!(r.is_err(), "close_stream of a released stream was taken");
                }
            }
            Op::Advance { ms } => self.advance(self.d.now.saturating_add(Duration::from_millis(u64::from(ms)))),
            Op::ToDeadline { extra_ms } => {
                let to = self.d.deadline().unwrap_or(self.d.now).max(self.d.now);
                self.advance(to.saturating_add(Duration::from_millis(u64::from(extra_ms))));
            }
            Op::Jump { secs } => self.advance(self.d.now.saturating_add(Duration::from_secs(u64::from(secs)))),
            Op::Close => {
                self.closing = true;
                self.d.input(|n, now| n.close(now));
                self.check();
            }
        }
    }
}

/// The scripted relay's answer to `request`: 401 with the realm and nonce unless it carries a
/// valid long-term MESSAGE-INTEGRITY, else a success (with what each method returns); for a
/// ConnectionBind of a known connection id, the peer the connection carries after.
fn relay_answer(request: &Stun, attempts: &HashMap<u32, SocketAddr>) -> (Vec<u8>, Option<SocketAddr>) {
    let id = request.transaction_id();
    let method = request.method();
    let mut buf = [0u8; 512];
    let authenticated = request.attributes().any(|a| a.code == stun_attr::MESSAGE_INTEGRITY) && request.verify_integrity(&relay_key()).is_ok();
    if !authenticated {
        let header = Header::new(Class::Error, method, id);
        let mut w = MessageWriter::new(&mut buf, header).unwrap();
        w.add(&Attribute::ErrorCode(ErrorCode { code: 401, reason: "fuzz" })).unwrap();
        w.add_turn(&header, &TurnAttribute::Realm(RELAY_REALM)).unwrap();
        w.add_turn(&header, &TurnAttribute::Nonce(b"fuzz-nonce")).unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        return (buf[..n].to_vec(), None);
    }
    let header = Header::new(Class::Success, method, id);
    let mut w = MessageWriter::new(&mut buf, header).unwrap();
    let mut binds_to = None;
    if method == turn_method::ALLOCATE {
        w.add_turn(&header, &TurnAttribute::XorRelayedAddress(relayed())).unwrap();
        w.add(&Attribute::XorMappedAddress("203.0.113.7:41000".parse().unwrap())).unwrap();
        w.add_turn(&header, &TurnAttribute::Lifetime(600)).unwrap();
    } else if method == turn_method::REFRESH {
        let lifetime = match turn_codec::find(request, turn_attr::LIFETIME) {
            Ok(Some(TurnAttribute::Lifetime(l))) => l,
            _ => 600,
        };
        w.add_turn(&header, &TurnAttribute::Lifetime(lifetime)).unwrap();
    } else if method == turn_method::CONNECTION_BIND {
        if let Ok(Some(TurnAttribute::ConnectionId(cid))) = turn_codec::find(request, turn_attr::CONNECTION_ID) {
            binds_to = attempts.get(&cid).copied();
        }
    }
    w.add_message_integrity(&relay_key()).unwrap();
    w.add_fingerprint().unwrap();
    let n = w.finish();
    (buf[..n].to_vec(), binds_to)
}

fuzz_target!(|input: Input| {
    let mut rendezvous = RendezvousConfig::new(vec![BrokerSpec::new(Some("broker"), broker())], EPOCH_MS);
    rendezvous.mqtt.protocol = Protocol::V311;
    let pnp = vec![PnpClientConfig::new(pnp_server(), public_key(3), PnpTransport::Udp, EPOCH_MS)];
    let mut config = NodeConfig::new(rendezvous, pnp);
    config.local_ip = local_ip();
    config.stun_tcp = Some(stun_server());
    config.nat = NatSource::Known(nat(input.nat));
    config.accept_from = Some(vec![identity(PEER).node_id()]);
    config.max_handshakes = 4;
    config.max_streams = 8;
    config.max_connects = 4;
    if input.relay {
        config.relays =
            vec![RelaySpec { server: relay_server(), credentials: CredentialSource::LongTerm(Credentials::long_term("u", "p")) }];
    }
    let now = Instant::from_millis(1);
    let node = Node::new(config, identity(ME).clone(), [input.seed as u8; 32], input.seed, now).unwrap();
    let d = Driven::new("node", node, |e| matches!(e, NodeEvent::Closed)).at(now);
    let mut h = H {
        d,
        t: SocketTable::default(),
        link: BrokerLink::default(),
        listener: None,
        stun: None,
        stun_request: None,
        pnp: None,
        tracks: HashMap::new(),
        pending_connects: HashMap::new(),
        streams: HashMap::new(),
        tokens: Vec::new(),
        nonces: Vec::new(),
        sealed: Vec::new(),
        counter: 0,
        closing: false,
        closed: false,
        next_remote: 0,
        relay_socks: HashMap::new(),
        relay_tokens: Vec::new(),
        attempts: HashMap::new(),
        next_cid: 0,
        relay_on: input.relay,
    };
    h.d.drain();
    h.check();
    for op in input.ops.into_iter().take(256) {
        h.run(op);
    }
    // The end: close, every socket answered as a runtime would, time runs out.
    h.run(Op::Close);
    for _ in 0..4 {
        h.settle();
        h.d.run_for(Duration::from_secs(60));
        h.check();
        if h.closed {
            break;
        }
    }
    assert!(h.closed, "no Closed after close and time");
    h.d.checker.assert_all_closed();
});
