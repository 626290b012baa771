//! Stateful fuzzing of the TCP hole-punch machine (`p2pd_punch::Puncher`): API calls (initiate,
//! provide candidates, close), signaling (raw bytes, or well-formed messages with the right or a
//! wrong session, round and sender, plus shortcuts that play the peer's side correctly: an answer
//! echoing an offer's `t1`, an ack echoing an answer's meet, a peer offer), socket outcomes for the
//! intents the machine issued (and for unknown ids), the far end of every connection that comes up
//! (`common/channel_peer.rs`: a real secure channel for the genuine peer, or for another identity,
//! session, round or role, its bytes whole, cut, bit-flipped, truncated or followed by junk;
//! replays of bytes seen on other connections; raw bytes), and time steps (small ones and jumps
//! past deadlines). Every node id is one of a few fixed identities.
//!
//! Driven through the contract checker (the winner of `Connected` is handed to the caller). Checks
//! besides the contract: an accept id that never got `Accepted` is never closed; transmits only go
//! to streams (connected or accepted) and are channel frames of the right size for the machine's
//! role: the leader's first message as soon as the connection is up (its third stays in the
//! winner's channel, for the caller to write); the follower's second message only once it has
//! read something; `Connected` only on a connection whose bytes began with the genuine peer's
//! whole handshake, with that peer's identity, its established channel handed over once (holding
//! exactly a prefix of what the peer sealed behind its handshake, and carrying data both ways
//! afterwards); a genuine peer fed only by a clean connection never fails and sees our identity;
//! a flipped bit in a whole handshake or data frame gets the connection closed at once; the
//! winner is never touched again; `Connected`/`Failed` at most once, nothing but `Closed` after
//! them; after the end the machine owns nothing; at most `max_sockets` open; ids in the
//! configured range; every signal payload decodes.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_proto::testing::{pick, Driven, Output};
use p2pd_proto::{Instant, IoError, OpKind, SocketId, SocketOp, SocketOutcome, Transport};
use p2pd_channel::{ChannelEvent, SeedSource};
use p2pd_punch::message::AbortReason;
use p2pd_punch::{Message, PunchCandidate, PunchConfig, PunchEvent, Puncher, SessionId};
use p2pd_signaling::NodeId;

#[path = "common/channel_peer.rs"]
mod channel_peer;
use channel_peer::{
    channel_keys, context, key_of, node_id, Conn, Kind, Tamper, IDENTITIES,
    MSG1_FRAME, MSG2_FRAME, MSG3_FRAME,
};

const BASE: u32 = 1000;

#[derive(Arbitrary, Debug, Clone, Copy)]
struct FCand {
    local_port: u16,
    v6: bool,
    ip: u32,
    port: u16,
}

#[derive(Arbitrary, Debug)]
enum Cands {
    /// Valid candidates (1..=4) in the machine's address family.
    Good(u8, u16),
    /// Anything, including empty, too many, port 0, the other family.
    Any(Vec<FCand>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SessionSel {
    /// The machine's current session.
    Current,
    /// A session from the fuzz input.
    Fuzz([u8; 2]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FromSel {
    Peer,
    Ourselves,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum Signal {
    Raw(Vec<u8>),
    Offer {
        session: SessionSel,
        round: i8,
        t1_off_ms: i16,
        cands: Cands,
    },
    Answer {
        session: SessionSel,
        round: i8,
        t1: u64,
        t2: u64,
        t3: u64,
        meet: u64,
        cands: Cands,
    },
    Ack {
        session: SessionSel,
        round: i8,
        meet: u64,
        uncertainty_ns: u64,
    },
    Abort {
        session: SessionSel,
        round: i8,
        reason: u8,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Err {
    AddrInUse,
    Refused,
    Reset,
    TimedOut,
    Unreachable,
    Unknown,
    Other,
}

impl Err {
    fn io(self) -> IoError {
        match self {
            Err::AddrInUse => IoError::AddrInUse,
            Err::Refused => IoError::ConnectionRefused,
            Err::Reset => IoError::ConnectionReset,
            Err::TimedOut => IoError::TimedOut,
            Err::Unreachable => IoError::HostUnreachable,
            Err::Unknown => IoError::UnknownSocket,
            Err::Other => IoError::Other(Some(5)),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum WildOutcome {
    Bound,
    Connected,
    Accepted,
    PeerClosed,
    Failed { op: u8, err: Err },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Initiate {
        peer: FromSel,
        cands: Cands,
    },
    Provide {
        round_delta: i8,
        cands: Cands,
    },
    /// A signaling message from someone.
    Signal {
        from: FromSel,
        signal: Signal,
    },
    /// Shortcut: the peer answers the machine's latest offer correctly (peer clock offset,
    /// processing time and lead from the input).
    PeerAnswer {
        t1_index: u8,
        offset_ms: i16,
        proc_ms: u8,
        lead_ms: u16,
        cands: Cands,
    },
    /// Shortcut: the peer offers (new session, or the current one with some round).
    PeerOffer {
        new_session: bool,
        round_delta: i8,
        offset_ms: i16,
        cands: Cands,
    },
    /// Shortcut: the peer acknowledges the machine's latest answer (`meet_delta` 0 is exact).
    PeerAck {
        meet_delta: i8,
        uncertainty_ms: u8,
    },
    /// Shortcut: the peer re-sends the latest signal the machine emitted back to it.
    Echo,
    /// Answer a pending bind (by index) with Bound or a failure.
    BindResult {
        which: u8,
        fail: Option<Err>,
    },
    /// Every pending bind succeeds.
    AllBound,
    /// Answer a pending connect.
    ConnectResult {
        which: u8,
        fail: Option<Err>,
    },
    /// Answer a pending accept.
    AcceptResult {
        which: u8,
        fail: Option<Err>,
        remote: u8,
    },
    /// A stream ends or fails.
    StreamEnd {
        which: u8,
        fail: Option<Err>,
    },
    /// Any outcome for some id (known or not; connected/accepted only for unknown ids).
    Wild {
        id: u16,
        outcome: WildOutcome,
    },
    /// The far end of a stream speaks (taken by `kind` if nobody has yet): everything its
    /// channel wrote since it last spoke, maybe data sealed behind its handshake, tampered with
    /// as asked, cut in two reads.
    Speak {
        which: u8,
        kind: Kind,
        data: Option<Vec<u8>>,
        tamper: Tamper,
        cut: u8,
    },
    /// Bytes seen on some connection (written by the machine or by a far end) arrive on another
    /// (or the same) stream.
    Replay {
        which: u8,
        chunk: u8,
        cut: u8,
    },
    /// A whole punch as a friendly world plays it: the machine initiates (or answers the
    /// peer's offer), the peer answers or acknowledges at once, every bind, connect and accept
    /// succeeds, time runs to each deadline, and the genuine peer speaks on every stream.
    Happy {
        lead_ms: u8,
    },
    /// Raw bytes on a stream (or any id).
    Bytes {
        which: u8,
        any_id: Option<u16>,
        data: Vec<u8>,
    },
    Advance {
        ms: u16,
    },
    /// To the next deadline (plus a little).
    ToDeadline {
        extra_ms: u8,
    },
    Jump {
        secs: u8,
    },
    Datagram,
    Close,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    seed: u64,
    /// Our identity and the peer's (of a few fixed ones; the smaller node id leads).
    us: u8,
    peer: u8,
    v6: bool,
    max_sockets: u8,
    small_ids: Option<u8>,
    max_rounds: u8,
    signal_attempts: u8,
    accept_offers: bool,
    epoch_s: u32,
    retry_ms: u8,
    window_ms: u16,
    lead_ms: u16,
    chosen_ms: u16,
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq)]
enum St {
    /// Bound by a Bind intent (bind outcome delivered or not).
    Opened {
        bound: bool,
        failed: bool,
        listening: bool,
        connecting: Option<SocketAddr>,
        local: SocketAddr,
    },
    /// An accept intent not yet answered.
    Accepting { listener: SocketId },
    /// A stream (connected or accepted).
    Stream { remote: SocketAddr, tx: usize },
    /// Handed to the caller by `Connected`.
    Winner,
}

struct H {
    d: Driven<Puncher>,
    ours: NodeId,
    /// Our identity and the peer's, by index.
    us: usize,
    their: usize,
    bind_ip: IpAddr,
    epoch_ns: u64,
    max_sockets: usize,
    span: u32,
    socks: HashMap<SocketId, St>,
    /// Every id the machine ever used.
    known: Vec<SocketId>,
    /// (session, round, t1s) of the offers the machine sent.
    offers: Vec<(SessionId, u8, u64)>,
    /// (session, round, meet) of the machine's latest answer.
    answer: Option<(SessionId, u8, u64)>,
    last_signal: Option<Vec<u8>>,
    need_round: u8,
    round: u8,
    peer: Option<NodeId>,
    /// The round of the latest `Armed`.
    armed: u8,
    /// The far end of every stream (and the context its channel is bound to).
    conns: HashMap<SocketId, Conn>,
    /// Bytes seen on connections (the machine's and the far ends'), for replays.
    seen: Vec<Vec<u8>>,
    counter: u32,
    terminal: bool,
    closed_event: bool,
}

impl H {
    fn wall(&self) -> u64 {
        self.epoch_ns.saturating_add(self.d.now.as_nanos())
    }

    fn from(&self, f: FromSel) -> NodeId {
        match f {
            FromSel::Peer => node_id(self.their),
            FromSel::Ourselves => self.ours,
            FromSel::Other(k) => node_id(usize::from(k)),
        }
    }

    fn session(&self, s: SessionSel) -> SessionId {
        match s {
            SessionSel::Current => self.d.machine.session().unwrap_or(SessionId([0; 16])),
            SessionSel::Fuzz([a, b]) => {
                let mut id = [a; 16];
                id[15] = b;
                SessionId(id)
            }
        }
    }

    fn cands(&self, c: &Cands) -> Vec<PunchCandidate> {
        match c {
            Cands::Good(n, base) => {
                let n = usize::from(*n % 4) + 1;
                (0..n)
                    .map(|i| {
                        let port = base.wrapping_add(i as u16 * 7).max(1);
                        let ip = if self.bind_ip.is_ipv4() {
                            IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8 + 1))
                        } else {
                            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16 + 1))
                        };
                        PunchCandidate {
                            local_port: 20_000 + (i as u16 % 2),
                            external: SocketAddr::new(ip, port),
                        }
                    })
                    .collect()
            }
            Cands::Any(list) => list
                .iter()
                .take(20)
                .map(|c| PunchCandidate {
                    local_port: c.local_port,
                    external: SocketAddr::new(
                        if c.v6 {
                            IpAddr::V6(Ipv6Addr::from(u128::from(c.ip)))
                        } else {
                            IpAddr::V4(Ipv4Addr::from(c.ip))
                        },
                        c.port,
                    ),
                })
                .collect(),
        }
    }

    fn round(&self, delta: i8) -> u8 {
        (i16::from(self.round) + i16::from(delta)).clamp(0, 255) as u8
    }

    fn ids_where(&self, f: impl Fn(&St) -> bool) -> Vec<SocketId> {
        let mut v: Vec<SocketId> = self
            .socks
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(id, _)| *id)
            .collect();
        v.sort_by_key(|s| s.0);
        v
    }

    /// Checks what the last input produced, in order (the contract checker saw it first).
    fn drain(&mut self) {
        for out in self.d.take().into_outputs() {
            match out {
                Output::Transmit(t, bytes) => self.transmit(t.socket, t.destination, &bytes),
                Output::Op(op) => self.op(op),
                Output::Event(ev) => self.event(ev),
            }
        }
        let open = self.d.machine.open_sockets();
        assert!(
            open <= self.max_sockets,
            "{open} sockets open, limit {}",
            self.max_sockets
        );
        let ours = self
            .socks
            .values()
            .filter(|s| !matches!(s, St::Winner))
            .count();
        assert!(
            ours <= open,
            "the machine owns {open} sockets, the runtime sees {ours}: {:?}",
            self.socks
        );
        if self.terminal || self.closed_event {
            assert_eq!(open, 0, "sockets left after the end");
            assert_eq!(ours, 0, "sockets left open after the end: {:?}", self.socks);
        }
        if self.closed_event {
            assert!(self.d.machine.is_closed());
        }
    }

    fn transmit(&mut self, socket: SocketId, destination: SocketAddr, bytes: &[u8]) {
        let Some(St::Stream { remote, tx }) = self.socks.get_mut(&socket) else {
            panic!("transmit on {socket} which is not an open stream: {:?}", self.socks.get(&socket));
        };
        assert_eq!(destination, *remote);
        let conn = self.conns.get_mut(&socket).expect("every stream has a far end");
        // The machine writes handshake messages only, one whole frame per transmit: the leader
        // its first as soon as the connection is up (its third stays in the winner's channel);
        // the follower its second once it has read the leader's first.
        let expected = match (conn.machine_leads, *tx) {
            (true, 0) => MSG1_FRAME,
            (false, 0) => {
                assert!(!conn.delivered.is_empty(), "the follower wrote before it read");
                MSG2_FRAME
            }
            (leads, sent) => panic!("the {} wrote {} more bytes after {sent}", if leads { "leader" } else { "follower" }, bytes.len()),
        };
        assert_eq!(bytes.len(), expected, "a handshake message of the wrong size (after {tx} bytes)");
        let announced = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        assert_eq!(announced + 2, bytes.len(), "one whole channel frame");
        *tx += bytes.len();
        conn.machine_wrote(self.d.now, bytes);
        self.remember(bytes);
    }

    /// Keeps `bytes` (seen on some connection) for replays.
    fn remember(&mut self, bytes: &[u8]) {
        if self.seen.len() >= 32 {
            self.seen.remove(0);
        }
        self.seen.push(bytes[..bytes.len().min(1024)].to_vec());
    }

    fn op(&mut self, op: SocketOp) {
        assert!(!self.terminal, "intent after the punch ended: {op:?}");
        let id = op.socket();
        assert!(id.0 >= BASE && id.0 < BASE + self.span, "id {id} outside the configured range");
        if !self.known.contains(&id) && self.known.len() < 4096 {
            self.known.push(id);
        }
        match op {
            SocketOp::Bind { socket, transport, local, options } => {
                assert_eq!(transport, Transport::Tcp);
                assert!(options.reuse_address && options.reuse_port, "reuse flags set before bind");
                assert_eq!(local.ip(), self.bind_ip);
                assert_ne!(local.port(), 0);
                assert!(!self.socks.contains_key(&socket), "bind on {socket} which is in use: {:?}", self.socks.get(&socket));
                self.socks.insert(socket, St::Opened { bound: false, failed: false, listening: false, connecting: None, local });
            }
            SocketOp::Listen { socket, .. } => match self.socks.get_mut(&socket) {
                Some(St::Opened { bound: true, failed: false, connecting: None, listening, .. }) => *listening = true,
                other => panic!("listen on {socket} in state {other:?}"),
            },
            SocketOp::Accept { listener, socket } => {
                assert!(
                    matches!(self.socks.get(&listener), Some(St::Opened { listening: true, failed: false, .. })),
                    "accept on {listener} which is not listening: {:?}",
                    self.socks.get(&listener)
                );
                assert!(!self.socks.contains_key(&socket), "accept id {socket} in use: {:?}", self.socks.get(&socket));
                self.socks.insert(socket, St::Accepting { listener });
            }
            SocketOp::Connect { socket, remote } => match self.socks.get_mut(&socket) {
                Some(St::Opened { bound: true, failed: false, listening: false, connecting, .. }) if connecting.is_none() => {
                    assert_eq!(remote.is_ipv4(), self.bind_ip.is_ipv4());
                    *connecting = Some(remote);
                }
                other => panic!("connect on {socket} in state {other:?}"),
            },
            SocketOp::Close { socket } => match self.socks.remove(&socket) {
                Some(St::Opened { listening, .. }) => {
                    if listening {
                        // The runtime drops the listener's outstanding accepts with it.
                        self.socks.retain(|_, s| *s != St::Accepting { listener: socket });
                    }
                }
                Some(St::Stream { .. }) => {
                    self.conns.remove(&socket);
                }
                other => panic!("close of {socket} in state {other:?} (an accept that never came up, or the winner)"),
            },
            other => panic!("unexpected intent {other:?}"),
        }
    }

    fn event(&mut self, ev: PunchEvent) {
        if self.terminal {
            assert!(matches!(ev, PunchEvent::Closed), "{ev:?} after the punch ended");
        }
        match ev {
            PunchEvent::Signal { peer, payload } => {
                assert_eq!(Some(peer), self.peer, "signal to a node that is not the peer");
                let msg = Message::decode(&payload).expect("signal payloads decode");
                assert_eq!(Some(msg.session()), self.d.machine.session(), "signal for another session");
                match &msg {
                    Message::Offer { session, round, t1, .. } => {
                        if self.offers.len() >= 64 {
                            self.offers.remove(0);
                        }
                        self.offers.push((*session, *round, *t1));
                        self.round = *round;
                    }
                    Message::Answer { session, round, meet, .. } => {
                        self.answer = Some((*session, *round, *meet));
                        self.round = *round;
                    }
                    _ => {}
                }
                self.last_signal = Some(payload);
            }
            PunchEvent::NeedCandidates { round } => {
                self.need_round = round;
                self.round = round;
            }
            PunchEvent::Connected { socket, remote, peer, .. } => {
                let Some(St::Stream { remote: r, tx }) = self.socks.get(&socket) else {
                    panic!("Connected on {socket} in state {:?}", self.socks.get(&socket));
                };
                assert_eq!(*r, remote);
                let tx = *tx;
                let conn = self.conns.remove(&socket).expect("every stream has a far end");
                let want = if conn.machine_leads { MSG1_FRAME } else { MSG2_FRAME };
                assert_eq!(tx, want, "Connected before the machine's handshake went out whole");
                assert!(
                    conn.may_win(),
                    "Connected on {socket}, whose bytes did not begin with the genuine peer's handshake (speaker {:?}, genuine {:?})",
                    conn.speaker.as_ref().map(|s| s.key),
                    conn.speaker.as_ref().map(|s| s.genuine)
                );
                assert_eq!(Some(peer.node_id()), self.peer, "Connected to another identity than the peer");
                self.check_winner(socket, peer, conn);
                // The winner is the caller's from now on.
                self.socks.insert(socket, St::Winner);
                self.d.checker.released(socket);
                self.terminal = true;
            }
            PunchEvent::Armed { round, meet, .. } => {
                assert!(meet > self.d.now, "armed for a meet time in the past");
                self.armed = round;
            }
            PunchEvent::Failed { .. } => self.terminal = true,
            PunchEvent::RoundFailed { round, .. } => self.round = round.saturating_add(1),
            PunchEvent::Closed => self.closed_event = true,
            _ => {}
        }
    }

    /// The winner's channel: handed over once, established with the peer, holding exactly a
    /// prefix of what the peer sealed behind its handshake, and carrying data both ways.
    fn check_winner(&mut self, socket: SocketId, peer: p2pd_channel::PublicKey, mut conn: Conn) {
        let now = self.d.now;
        let mut ch = self.d.machine.take_channel(socket).expect("the winner's channel");
        assert!(self.d.machine.take_channel(socket).is_none(), "the winner's channel taken twice");
        assert!(ch.is_established());
        assert_eq!(ch.peer(), Some(peer));
        assert_eq!(ch.poll_event(), Some(ChannelEvent::Established { peer }));
        // The leader's last handshake message waits in the winner's channel: the caller writes it
        // first. A follower's channel has nothing to write.
        let msg3 = ch.pending_transmit().to_vec();
        ch.consume_transmit(msg3.len());
        let want = if conn.machine_leads { MSG3_FRAME } else { 0 };
        // A FINISH the far end forged behind its handshake is acknowledged at once (one
        // FINISH-ACK frame more).
        let forged = conn.speaker.as_ref().is_some_and(|s| s.forged);
        let acked_forgery = forged && msg3.len() == want + p2pd_channel::FRAME_OVERHEAD;
        if !acked_forgery {
            assert_eq!(msg3.len(), want, "the winner's channel holds the leader's last handshake message only");
        }
        if !msg3.is_empty() {
            conn.machine_wrote(now, &msg3);
            self.remember(&msg3);
        }
        let mut got = Vec::new();
        let mut failed = false;
        while let Some(ev) = ch.poll_event() {
            match ev {
                ChannelEvent::Data(d) => {
                    assert!(!failed, "data after a failure");
                    got.extend_from_slice(&d);
                }
                ChannelEvent::Failed(_) => failed = true,
                ChannelEvent::PeerFinished if forged => {}
                other => panic!("the winner's channel holds {other:?}"),
            }
        }
        let clean = conn.clean();
        if let Some(expected) = conn.must_have_opened() {
            assert_eq!(got, expected, "the winner's channel holds the peer's data behind its handshake");
        }
        let sp = conn.speaker.as_mut().expect("a genuine far end");
        assert!(sp.sealed.starts_with(&got), "the winner's channel delivered what the peer did not seal");
        if failed || forged {
            // (After a forged frame the far end's channel no longer agrees with ours: an ack of
            // a FINISH it never sealed fails it.)
            return;
        }
        // Our side to the peer.
        ch.send(now, b"from the caller").unwrap();
        let out = ch.pending_transmit().to_vec();
        ch.consume_transmit(out.len());
        let opened = sp.opened.len();
        conn.machine_wrote(now, &out);
        let sp = conn.speaker.as_mut().unwrap();
        assert_eq!(&sp.opened[opened..], b"from the caller");
        // The peer's side to us: the rest of what it produced, then a new frame.
        if clean {
            sp.seal(now, b"from the peer", false);
            ch.handle_input(now, &sp.produced[conn.delivered.len()..]);
            while let Some(ev) = ch.poll_event() {
                match ev {
                    ChannelEvent::Data(d) => got.extend_from_slice(&d),
                    other => panic!("the winner's channel: {other:?} on the peer's genuine bytes"),
                }
            }
            assert_eq!(got, sp.sealed, "the winner's channel opens what the peer sealed");
        }
    }

    fn outcome(&mut self, socket: SocketId, outcome: SocketOutcome) {
        self.d.outcome(socket, outcome);
        self.drain();
    }

    /// A stream came up: its far end, bound to the current session and round.
    fn came_up(&mut self, id: SocketId, remote: SocketAddr, outcome: SocketOutcome) {
        self.socks.insert(id, St::Stream { remote, tx: 0 });
        let session = self.d.machine.session().unwrap_or(SessionId([0; 16]));
        let leads = self.peer.is_some_and(|p| self.ours < p);
        let conn = Conn::new(context(session.0, self.armed), leads, self.peer.and_then(key_of), self.us);
        self.conns.insert(id, conn);
        self.outcome(id, outcome);
        if let (Some(St::Stream { tx, .. }), Some(c)) = (self.socks.get(&id), self.conns.get(&id)) {
            let want = if c.machine_leads { MSG1_FRAME } else { 0 };
            assert_eq!(*tx, want, "the leader's first message goes out as the connection comes up");
        }
    }

    /// `bytes` arrive on stream `id`, cut in two reads. `must_fail`: the channel must fail on
    /// them (the connection closed, a channel failure counted).
    fn deliver(&mut self, id: SocketId, bytes: Vec<u8>, cut: u8, must_fail: bool) {
        if bytes.is_empty() {
            return;
        }
        self.remember(&bytes);
        let failures = self.d.machine.stats().channel_failures;
        let cut = usize::from(cut).min(bytes.len());
        let mut handed = 0;
        for part in [&bytes[..cut], &bytes[cut..]] {
            if part.is_empty() || !matches!(self.socks.get(&id), Some(St::Stream { .. })) {
                continue;
            }
            handed += part.len();
            if let Some(c) = self.conns.get_mut(&id) {
                c.handed(part);
            }
            let _ = self.d.stream(id, part);
            self.drain();
            if let Some(c) = self.conns.get(&id) {
                c.check_speaker();
            }
        }
        // (Unless the connection won on the first read and the flipped bit was in the second.)
        if must_fail && handed == bytes.len() {
            assert!(!self.socks.contains_key(&id), "a flipped bit in a whole frame, and the connection stays");
            assert!(self.d.machine.stats().channel_failures > failures);
        }
    }

    fn signal(&mut self, from: NodeId, payload: &[u8]) {
        let before = self.d.machine.session();
        let _ = self.d.input(|m, now| m.handle_signal(now, from, payload));
        // An offer that starts a session (idle, or glare) makes its sender the peer.
        if let Ok(Message::Offer { session, .. }) = Message::decode(payload) {
            if before != Some(session) && self.d.machine.session() == Some(session) {
                self.peer = Some(from);
            }
        }
        self.drain();
    }

    fn message(&mut self, from: NodeId, msg: Message) {
        if let Ok(bytes) = msg.encode() {
            self.signal(from, &bytes);
        }
    }

    /// Time moves to `to`: handle_timeout (at most once more if the deadline is still due).
    fn advance(&mut self, to: Instant) {
        self.d.now = self.d.now.max(to);
        self.d.fire();
        self.drain();
    }

    fn stream_id(&self, which: u8) -> Option<SocketId> {
        pick(&self.ids_where(|s| matches!(s, St::Stream { .. })), which)
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Initiate { peer, cands } => {
                let peer = self.from(peer);
                let c = self.cands(&cands);
                let was_idle = self.d.machine.session().is_none() && !self.d.machine.is_closed();
                if self.d.input(|m, now| m.initiate(now, peer, c)).is_ok() {
                    assert!(was_idle);
                    self.peer = Some(peer);
                    self.round = 0;
                }
                self.drain();
            }
            Op::Provide { round_delta, cands } => {
                let round =
                    (i16::from(self.need_round) + i16::from(round_delta % 2)).clamp(0, 255) as u8;
                let c = self.cands(&cands);
                let _ = self.d.input(|m, now| m.provide_candidates(now, round, c));
                self.drain();
            }
            Op::Signal { from, signal } => {
                let from = self.from(from);
                let msg = match signal {
                    Signal::Raw(bytes) => {
                        self.signal(from, &bytes);
                        return;
                    }
                    Signal::Offer {
                        session,
                        round,
                        t1_off_ms,
                        cands,
                    } => Message::Offer {
                        session: self.session(session),
                        round: self.round(round),
                        t1: (self.wall() as i64).wrapping_add(i64::from(t1_off_ms) * 1_000_000)
                            as u64,
                        candidates: self.cands(&cands),
                    },
                    Signal::Answer {
                        session,
                        round,
                        t1,
                        t2,
                        t3,
                        meet,
                        cands,
                    } => Message::Answer {
                        session: self.session(session),
                        round: self.round(round),
                        t1,
                        t2,
                        t3,
                        meet,
                        candidates: self.cands(&cands),
                    },
                    Signal::Ack {
                        session,
                        round,
                        meet,
                        uncertainty_ns,
                    } => Message::Ack {
                        session: self.session(session),
                        round: self.round(round),
                        meet,
                        uncertainty_ns,
                    },
                    Signal::Abort {
                        session,
                        round,
                        reason,
                    } => Message::Abort {
                        session: self.session(session),
                        round: self.round(round),
                        reason: [
                            AbortReason::TooUncertain,
                            AbortReason::TooLate,
                            AbortReason::Cancelled,
                            AbortReason::NoSockets,
                        ][usize::from(reason % 4)],
                    },
                };
                self.message(from, msg);
            }
            Op::PeerAnswer {
                t1_index,
                offset_ms,
                proc_ms,
                lead_ms,
                cands,
            } => {
                let Some((session, round, t1)) = pick(&self.offers, t1_index) else {
                    return;
                };
                let t2 = (self.wall() as i64).wrapping_add(i64::from(offset_ms) * 1_000_000) as u64;
                let t3 = t2.wrapping_add(u64::from(proc_ms) * 1_000_000);
                let meet = t3.wrapping_add(u64::from(lead_ms) * 1_000_000);
                let msg = Message::Answer {
                    session,
                    round,
                    t1,
                    t2,
                    t3,
                    meet,
                    candidates: self.cands(&cands),
                };
                self.message(node_id(self.their), msg);
            }
            Op::PeerOffer {
                new_session,
                round_delta,
                offset_ms,
                cands,
            } => {
                let session = if new_session {
                    let mut s = [0x77; 16];
                    s[0] = self.round;
                    SessionId(s)
                } else {
                    self.session(SessionSel::Current)
                };
                let round = if new_session {
                    0
                } else {
                    self.round(round_delta % 3)
                };
                let t1 = (self.wall() as i64).wrapping_add(i64::from(offset_ms) * 1_000_000) as u64;
                let msg = Message::Offer {
                    session,
                    round,
                    t1,
                    candidates: self.cands(&cands),
                };
                self.message(node_id(self.their), msg);
            }
            Op::PeerAck {
                meet_delta,
                uncertainty_ms,
            } => {
                let Some((session, round, meet)) = self.answer else {
                    return;
                };
                let meet = (meet as i64).wrapping_add(i64::from(meet_delta)) as u64;
                let msg = Message::Ack {
                    session,
                    round,
                    meet,
                    uncertainty_ns: u64::from(uncertainty_ms) * 1_000_000,
                };
                self.message(node_id(self.their), msg);
            }
            Op::Echo => {
                if let Some(bytes) = self.last_signal.clone() {
                    self.signal(node_id(self.their), &bytes);
                }
            }
            Op::BindResult { which, fail } => {
                let pending = self.ids_where(|s| {
                    matches!(
                        s,
                        St::Opened {
                            bound: false,
                            failed: false,
                            ..
                        }
                    )
                });
                let Some(id) = pick(&pending, which) else {
                    return;
                };
                self.bind_result(id, fail);
            }
            Op::AllBound => {
                for id in self.ids_where(|s| {
                    matches!(
                        s,
                        St::Opened {
                            bound: false,
                            failed: false,
                            ..
                        }
                    )
                }) {
                    if matches!(
                        self.socks.get(&id),
                        Some(St::Opened {
                            bound: false,
                            failed: false,
                            ..
                        })
                    ) {
                        self.bind_result(id, None);
                    }
                }
            }
            Op::ConnectResult { which, fail } => {
                let pending = self.ids_where(|s| {
                    matches!(
                        s,
                        St::Opened {
                            connecting: Some(_),
                            failed: false,
                            ..
                        }
                    )
                });
                let Some(id) = pick(&pending, which) else {
                    return;
                };
                let Some(St::Opened {
                    connecting: Some(remote),
                    local,
                    ..
                }) = self.socks.get(&id).cloned()
                else {
                    return;
                };
                match fail {
                    None => self.came_up(id, remote, SocketOutcome::Connected { local, remote }),
                    Some(e) => {
                        self.mark_failed(id);
                        self.outcome(
                            id,
                            SocketOutcome::Failed {
                                op: OpKind::Connect,
                                destination: None,
                                error: e.io(),
                            },
                        );
                    }
                }
            }
            Op::AcceptResult {
                which,
                fail,
                remote,
            } => {
                let pending = self.ids_where(|s| matches!(s, St::Accepting { .. }));
                let Some(id) = pick(&pending, which) else {
                    return;
                };
                let Some(St::Accepting { listener }) = self.socks.get(&id).cloned() else {
                    return;
                };
                let local = match self.socks.get(&listener) {
                    Some(St::Opened { local, .. }) => *local,
                    _ => SocketAddr::new(self.bind_ip, 1),
                };
                match fail {
                    None => {
                        let ip = if self.bind_ip.is_ipv4() {
                            IpAddr::V4(Ipv4Addr::new(203, 0, 113, remote % 8))
                        } else {
                            IpAddr::V6(Ipv6Addr::new(
                                0x2001,
                                0xdb8,
                                0,
                                0,
                                0,
                                0,
                                0,
                                u16::from(remote % 8),
                            ))
                        };
                        let remote = SocketAddr::new(ip, 40_000 + u16::from(remote));
                        self.came_up(id, remote, SocketOutcome::Accepted { local, remote });
                    }
                    Some(e) => {
                        // The machine forgets a failed accept without closing it.
                        self.socks.remove(&id);
                        self.outcome(
                            id,
                            SocketOutcome::Failed {
                                op: OpKind::Accept,
                                destination: None,
                                error: e.io(),
                            },
                        );
                    }
                }
            }
            Op::StreamEnd { which, fail } => {
                let Some(id) = self.stream_id(which) else {
                    return;
                };
                let outcome = match fail {
                    None => SocketOutcome::PeerClosed,
                    Some(e) => SocketOutcome::Failed {
                        op: OpKind::Receive,
                        destination: None,
                        error: e.io(),
                    },
                };
                self.outcome(id, outcome);
            }
            Op::Wild { id, outcome } => {
                self.wild(SocketId(BASE.wrapping_add(u32::from(id))), outcome)
            }
            Op::Speak { which, kind, data, tamper, cut } => {
                let Some(id) = self.stream_id(which) else {
                    return;
                };
                self.counter += 1;
                let now = self.d.now;
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let Some(speaker) = conn.speaker(now, kind, self.counter) else {
                    return;
                };
                if let Some(data) = data {
                    speaker.seal(now, &data[..data.len().min(512)], false);
                }
                conn.check_speaker();
                let delivery = conn.deliver(&tamper);
                self.deliver(id, delivery.bytes, cut, delivery.must_fail);
            }
            Op::Replay { which, chunk, cut } => {
                let Some(id) = self.stream_id(which) else {
                    return;
                };
                let Some(bytes) = self.seen.get(usize::from(chunk) % self.seen.len().max(1)).cloned() else {
                    return;
                };
                self.deliver(id, bytes, cut, false);
            }
            Op::Happy { lead_ms } => self.happy(lead_ms),
            Op::Bytes {
                which,
                any_id,
                data,
            } => {
                let id = match any_id {
                    Some(i) => SocketId(BASE.wrapping_add(u32::from(i))),
                    None => match self.stream_id(which) {
                        Some(id) => id,
                        None => return,
                    },
                };
                if let Some(c) = self.conns.get_mut(&id) {
                    c.handed(&data);
                }
                let _ = self.d.stream(id, &data);
                self.drain();
                if let Some(c) = self.conns.get(&id) {
                    c.check_speaker();
                }
            }
            Op::Advance { ms } => self.advance(self.d.now.saturating_add(Duration::from_millis(u64::from(ms)))),
            Op::ToDeadline { extra_ms } => {
                let to = self.d.deadline().unwrap_or(self.d.now).max(self.d.now);
                self.advance(to.saturating_add(Duration::from_millis(u64::from(extra_ms))));
            }
            Op::Jump { secs } => self.advance(self.d.now.saturating_add(Duration::from_secs(u64::from(secs)))),
            Op::Datagram => {
                let v = self.d.datagram(SocketId(BASE), "192.0.2.1:1".parse().unwrap(), b"x");
                assert_eq!(v, p2pd_proto::Verdict::NotMine);
                self.drain();
            }
            Op::Close => {
                let was_closed = self.d.machine.is_closed();
                self.d.input(|m, now| m.close(now));
                self.drain();
                assert!(self.closed_event, "no Closed after close");
                if !was_closed {
                    self.d.input(|m, now| m.close(now));
                    self.drain();
                }
            }
        }
    }

    /// A whole punch as a friendly world plays it (so the fuzzer starts from the deep states).
    fn happy(&mut self, lead_ms: u8) {
        if self.d.machine.session().is_none() && !self.d.machine.is_closed() {
            self.run(Op::Initiate { peer: FromSel::Peer, cands: Cands::Good(0, 30_000) });
        }
        self.run(Op::Provide { round_delta: 0, cands: Cands::Good(0, 30_000) });
        if let Some(last) = self.offers.len().checked_sub(1) {
            let lead_ms = 150 + u16::from(lead_ms);
            let cands = Cands::Good(1, 40_000);
            self.run(Op::PeerAnswer { t1_index: last as u8, offset_ms: 0, proc_ms: 0, lead_ms, cands });
        }
        self.run(Op::PeerAck { meet_delta: 0, uncertainty_ms: 1 });
        for _ in 0..8 {
            if self.terminal {
                break;
            }
            self.run(Op::AllBound);
            self.run(Op::ToDeadline { extra_ms: 0 });
            for _ in 0..4 {
                self.run(Op::ConnectResult { which: 0, fail: None });
            }
            for k in 0..4 {
                self.run(Op::AcceptResult { which: 0, fail: None, remote: k });
            }
            for _ in 0..2 {
                for id in self.ids_where(|s| matches!(s, St::Stream { .. })) {
                    if let Some(which) = self.ids_where(|s| matches!(s, St::Stream { .. })).iter().position(|s| *s == id) {
                        self.run(Op::Speak { which: which as u8, kind: Kind::Genuine, data: None, tamper: Tamper::None, cut: 255 });
                    }
                }
            }
        }
    }

    fn mark_failed(&mut self, id: SocketId) {
        if let Some(St::Opened {
            failed, connecting, ..
        }) = self.socks.get_mut(&id)
        {
            *failed = true;
            *connecting = None;
        }
    }

    fn bind_result(&mut self, id: SocketId, fail: Option<Err>) {
        match fail {
            None => {
                let local = match self.socks.get_mut(&id) {
                    Some(St::Opened { bound, local, .. }) => {
                        *bound = true;
                        *local
                    }
                    _ => SocketAddr::new(self.bind_ip, 1),
                };
                self.outcome(id, SocketOutcome::Bound { local });
            }
            Some(e) => {
                self.mark_failed(id);
                self.outcome(
                    id,
                    SocketOutcome::Failed {
                        op: OpKind::Bind,
                        destination: None,
                        error: e.io(),
                    },
                );
            }
        }
    }

    fn wild(&mut self, id: SocketId, outcome: WildOutcome) {
        let known = self.known.contains(&id);
        let local = SocketAddr::new(self.bind_ip, 20_000);
        let remote = SocketAddr::new(self.bind_ip, 9);
        let outcome = match outcome {
            WildOutcome::Bound => {
                if let Some(St::Opened {
                    bound,
                    failed: false,
                    ..
                }) = self.socks.get_mut(&id)
                {
                    *bound = true;
                }
                SocketOutcome::Bound { local }
            }
            // A connect or accept the machine never asked for only makes sense for a foreign id.
            WildOutcome::Connected if !known => SocketOutcome::Connected { local, remote },
            WildOutcome::Accepted if !known => SocketOutcome::Accepted { local, remote },
            WildOutcome::Connected | WildOutcome::Accepted | WildOutcome::PeerClosed => {
                SocketOutcome::PeerClosed
            }
            WildOutcome::Failed { op, err } => {
                let kinds = [
                    OpKind::Bind,
                    OpKind::Connect,
                    OpKind::Listen,
                    OpKind::Accept,
                    OpKind::Send,
                    OpKind::Receive,
                ];
                match self.socks.get(&id) {
                    Some(St::Accepting { .. }) => {
                        self.socks.remove(&id);
                    }
                    Some(St::Opened { .. }) => self.mark_failed(id),
                    _ => {}
                }
                SocketOutcome::Failed {
                    op: kinds[usize::from(op) % kinds.len()],
                    destination: None,
                    error: err.io(),
                }
            }
        };
        self.outcome(id, outcome);
    }
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let us = usize::from(s.us) % IDENTITIES;
    let their = (us + 1 + usize::from(s.peer) % (IDENTITIES - 1)) % IDENTITIES;
    let ours = node_id(us);
    let epoch_ns = u64::from(s.epoch_s) * 1_000_000_000;
    let mut config = PunchConfig::new(ours, epoch_ns);
    config.bind_ip = if s.v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    };
    config.max_sockets = usize::from(s.max_sockets % 24) + 1;
    config.socket_base = SocketId(BASE);
    config.socket_ids = match s.small_ids {
        Some(n) => u32::from(n % 40) + 1,
        None => 4096,
    };
    config.max_rounds = s.max_rounds % 4 + 1;
    config.signal_attempts = u32::from(s.signal_attempts % 5) + 1;
    config.accept_offers = s.accept_offers;
    config.retry_interval = Duration::from_millis(u64::from(s.retry_ms) + 1);
    config.punch_window = Duration::from_millis(u64::from(s.window_ms) + 1);
    config.lead = Duration::from_millis(u64::from(s.lead_ms));
    config.chosen_timeout = Duration::from_millis(u64::from(s.chosen_ms));
    let seeds = SeedSource::new([s.seed as u8; 32]);
    let puncher = Puncher::new(config.clone(), channel_keys(us).clone(), seeds, s.seed).unwrap();
    let mut h = H {
        d: Driven::new("puncher", puncher, |e| matches!(e, PunchEvent::Closed)).at(Instant::from_millis(1)),
        ours,
        us,
        their,
        bind_ip: config.bind_ip,
        epoch_ns,
        max_sockets: config.max_sockets,
        span: config.socket_ids,
        socks: HashMap::new(),
        known: Vec::new(),
        offers: Vec::new(),
        answer: None,
        last_signal: None,
        need_round: 0,
        round: 0,
        peer: None,
        armed: 0,
        conns: HashMap::new(),
        seen: Vec::new(),
        counter: 0,
        terminal: false,
        closed_event: false,
    };
    for op in input.ops.into_iter().take(256) {
        h.run(op);
    }
    // Closing always ends cleanly.
    h.run(Op::Close);
    assert!(h.closed_event);
    assert_eq!(h.d.machine.open_sockets(), 0);
    h.d.checker.assert_all_closed();
});
