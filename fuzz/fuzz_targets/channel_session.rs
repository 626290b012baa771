//! Stateful fuzzing of the secure channel (`p2pd_channel::Channel`), one side attacked. The target
//! plays the network between the attacked side and a genuine peer (a real channel of the genuine
//! identity, a stranger, or the attacked side's own identity): it feeds the attacked side
//! arbitrary bytes, the peer's frames (pristine, or with a bit flipped, truncated, duplicated,
//! reordered or dropped), frames recorded in an earlier session of the same identities (replays)
//! and its own bytes back (reflection), in arbitrary chunks; it advances time, ends the stream and
//! calls `send`, `finish` and `close` on the attacked side, and `send` and `finish` on the peer;
//! the peer may also seal a frame of any kind and payload (`seal_raw`: unknown kinds, empty DATA,
//! an ack without a FINISH, a FINISH with a payload), which only a peer with the keys can;
//! the attacked side's bytes reach the peer whole or in part (a socket that took part of a write).
//! The session may start with a complete genuine handshake, so the established phase is fuzzed
//! from the first operation.
//!
//! Checks after every operation: no panic; `Established` at most once, only with an identity the
//! attacked side's role accepts, and it is the peer's (nothing else can prove one); `Data` only
//! after it and before `PeerFinished`, never after `Failed` or `Closed`, and everything delivered
//! is a prefix of what the peer sent (no injection; at `PeerFinished` all of it); at most one
//! `Failed` and one `Closed`, nothing else after either; `stats().bytes_in` is the sum of the
//! delivered `Data`; the pending transmit stays within the send buffer (or one handshake message)
//! plus one FINISH and one FINISH-ACK frame, and is empty once the channel ended;
//! `FinishAcknowledged` at most once, only after our `finish`, and (unless the peer forged frames)
//! only once the peer has everything we sent; the peer's `FinishAcknowledged` only after the
//! attacked side read its FINISH; `poll_timeout` is the handshake
//! deadline while the handshake runs and `None` otherwise; `send` takes exactly what `send_room`
//! said, and its errors match the state. The peer (it only ever gets the attacked side's pristine
//! bytes) delivers a prefix of what the attacked side sent and never fails unless the network
//! misbehaved or one side refuses the other's identity. At the end of a session in which the
//! network only ever delivered pristine bytes, both sides complete the handshake (when they
//! accept each other) and deliver everything the other sent, and a FINISH on either side is
//! acknowledged.
#![no_main]

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use p2pd_channel::{
    Channel, ChannelApiError, ChannelConfig, ChannelEvent, ChannelKeys, Identity, Instant, NodeId, PublicKey, Role,
    FRAME_HEADER_LEN, FRAME_OVERHEAD, HANDSHAKE_MAX_LEN, KIND_DATA,
};

const CONTEXT: &[u8] = b"fuzz session";
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_FRAMES: [usize; 5] = [1, 7, 64, 1000, 16 * 1024];

/// 0: the attacked side, 1: its genuine peer, 2: a stranger.
fn keys() -> &'static [ChannelKeys; 3] {
    static KEYS: OnceLock<[ChannelKeys; 3]> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::array::from_fn(|i| {
            let identity = Identity::from_secret_bytes(&[i as u8 + 1; 32]).unwrap();
            ChannelKeys::new(&identity, [i as u8 + 40; 32]).unwrap()
        })
    })
}

fn node_id(k: usize) -> NodeId {
    keys()[k].identity().node_id()
}

/// The wire length of a transport frame with `plaintext` application bytes.
fn wire_len(plaintext: usize) -> usize {
    FRAME_OVERHEAD + plaintext
}

/// Whole frames of a well-formed stream.
fn split_frames(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
        let (frame, rest) = bytes.split_at(FRAME_HEADER_LEN + len);
        frames.push(frame.to_vec());
        bytes = rest;
    }
    frames
}

fn take_all(c: &mut Channel) -> Vec<u8> {
    let bytes = c.pending_transmit().to_vec();
    c.consume_transmit(bytes.len());
    bytes
}

/// A session recorded earlier between the same identities (other seeds, the same context): every
/// frame both sides wrote, the handshake, data and FINISH. Index: whether the attacked side was
/// the initiator.
fn recorded() -> &'static [Vec<Vec<u8>>; 2] {
    static RECORDED: OnceLock<[Vec<Vec<u8>>; 2]> = OnceLock::new();
    RECORDED.get_or_init(|| {
        [false, true].map(|attacked_initiates| {
            let config = ChannelConfig::default();
            let k = keys();
            let (a_role, p_role) = if attacked_initiates {
                (Role::Initiator { expect: node_id(1) }, Role::Responder { expect: None })
            } else {
                (Role::Responder { expect: None }, Role::Initiator { expect: node_id(0) })
            };
            let mut a = Channel::new(config, &k[0], a_role, CONTEXT, [201; 32], Instant::ZERO).unwrap();
            let mut p = Channel::new(config, &k[1], p_role, CONTEXT, [202; 32], Instant::ZERO).unwrap();
            let mut frames = Vec::new();
            for _ in 0..3 {
                let ab = take_all(&mut a);
                p.handle_input(Instant::ZERO, &ab);
                let pa = take_all(&mut p);
                a.handle_input(Instant::ZERO, &pa);
                frames.extend(split_frames(&ab));
                frames.extend(split_frames(&pa));
            }
            assert!(a.is_established() && p.is_established());
            a.send(Instant::ZERO, b"an old message from the attacked side").unwrap();
            p.send(Instant::ZERO, b"an old message from the peer").unwrap();
            p.finish(Instant::ZERO).unwrap();
            frames.extend(split_frames(&take_all(&mut a)));
            frames.extend(split_frames(&take_all(&mut p)));
            frames
        })
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Mutation {
    None,
    /// One bit flipped, at `bit` modulo the frame's bits.
    FlipBit(u16),
    /// Only the first `keep` (modulo the frame's length) bytes.
    Truncate(u16),
    /// The frame twice.
    Duplicate,
    /// The frame after it first (when there is one).
    Reorder,
    /// Lost.
    Drop,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Arbitrary bytes, cut into chunks.
    Raw {
        bytes: Vec<u8>,
        cuts: [u8; 3],
    },
    /// The peer's next frame, maybe mutated, cut into chunks.
    PeerFrame {
        mutation: Mutation,
        cuts: [u8; 3],
    },
    /// Every frame the peer has written, pristine, cut into chunks.
    PeerFrames {
        cuts: [u8; 3],
    },
    /// The attacked side's bytes reach the peer.
    ToPeer,
    /// Only the first `len` of them (a socket that took part of a write): the rest stays
    /// pending, and later sends go after it.
    ToPeerPart { len: u16 },
    /// The attacked side's bytes come back to itself.
    Reflect,
    /// A frame of the recorded earlier session (the peer's or the attacked side's own).
    Replay {
        which: u8,
        cuts: [u8; 3],
    },
    PeerSend {
        len: u16,
    },
    PeerFinish,
    /// The peer seals a frame of kind `kind % 6` (0 DATA, 1 FINISH, 2 FINISH-ACK, others
    /// unknown) with `len % 3` bytes.
    PeerForge {
        kind: u8,
        len: u8,
    },
    Advance {
        ms: u16,
    },
    /// Time jumps to the handshake deadline (plus `extra` ms).
    ToDeadline {
        extra: u8,
    },
    EndOfStream,
    Send {
        len: u16,
    },
    Finish,
    Close,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PeerIs {
    Genuine,
    Stranger,
    /// The attacked side's own identity (a connection to itself).
    Itself,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Expect {
    Anyone,
    Genuine,
    Stranger,
    Itself,
}

#[derive(Arbitrary, Debug)]
struct Input {
    attacked_initiates: bool,
    handshake_first: bool,
    peer: PeerIs,
    /// The attacked responder's expectation (an initiator always expects the genuine peer).
    expect: Expect,
    /// `max_frame` (one of `MAX_FRAMES`) and the send buffer (1 to 4 frames, plus some).
    frame: u8,
    buffer: u8,
    ops: Vec<Op>,
}

/// Whether a channel in `role` owned by `own` accepts a peer proving `proved` (the crate's rule:
/// the expected identity, else anyone but ourselves).
fn accepts(role: Role, own: NodeId, proved: NodeId) -> bool {
    match role {
        Role::Initiator { expect } | Role::Responder { expect: Some(expect) } => proved == expect,
        Role::Responder { expect: None } => proved != own,
    }
}

struct H {
    now: Instant,
    deadline: Instant,
    config: ChannelConfig,
    attacked: Channel,
    role: Role,
    peer: Channel,
    peer_key: PublicKey,
    /// Both sides accept each other's identity.
    mutual: bool,
    /// The peer's frames not yet delivered.
    from_peer: VecDeque<Vec<u8>>,
    /// Plaintext each side's `send` took, and what the other delivered.
    peer_sent: Vec<u8>,
    delivered: Vec<u8>,
    sent: Vec<u8>,
    peer_got: Vec<u8>,
    established: bool,
    peer_finished: bool,
    failed: bool,
    closed: bool,
    finished: bool,
    peer_failed: bool,
    /// The attacked side's FINISH was acknowledged; the peer's was.
    acked: bool,
    peer_acked: bool,
    /// The peer finished (its own `finish`).
    peer_finishing: bool,
    /// The peer sealed a frame with `seal_raw`.
    forged: bool,
    /// The network delivered something other than the peer's pristine frames in order.
    tainted: bool,
    counter: u8,
}

impl H {
    fn feed(&mut self, bytes: &[u8], cuts: [u8; 3]) {
        let mut rest = bytes;
        for cut in cuts {
            let n = usize::from(cut).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            self.attacked.handle_input(self.now, chunk);
            rest = tail;
        }
        self.attacked.handle_input(self.now, rest);
    }

    /// The peer's new frames into the queue.
    fn collect_peer(&mut self) {
        let bytes = take_all(&mut self.peer);
        self.from_peer.extend(split_frames(&bytes));
    }

    fn to_peer(&mut self) {
        let bytes = take_all(&mut self.attacked);
        self.peer.handle_input(self.now, &bytes);
        self.collect_peer();
    }

    fn peer_frames(&mut self, cuts: [u8; 3]) {
        let all: Vec<u8> = self.from_peer.drain(..).flatten().collect();
        self.feed(&all, cuts);
    }

    fn ended(&self) -> bool {
        self.failed || self.closed
    }

    fn check(&mut self) {
        // The peer's events first: an ack the attacked side reads now was sealed after the peer
        // took in everything it acknowledges.
        let p = &mut self.peer;
        while let Some(event) = p.poll_event() {
            match event {
                ChannelEvent::Data(data) => {
                    self.peer_got.extend_from_slice(&data);
                    assert!(self.sent.starts_with(&self.peer_got), "the peer got what was never sent");
                }
                ChannelEvent::Failed(failure) => {
                    assert!(self.tainted || !self.mutual, "the genuine peer failed on pristine bytes: {failure:?}");
                    self.peer_failed = true;
                }
                ChannelEvent::Established { peer } => assert_eq!(peer, keys()[0].identity()),
                ChannelEvent::PeerFinished => assert_eq!(self.peer_got, self.sent),
                ChannelEvent::FinishAcknowledged => {
                    assert!(self.peer_finishing && !self.peer_acked && self.peer_finished, "the peer's ack out of place");
                    self.peer_acked = true;
                }
                ChannelEvent::Closed => unreachable!("the peer is never closed"),
            }
        }

        while let Some(event) = self.attacked.poll_event() {
            match event {
                ChannelEvent::Established { peer } => {
                    assert!(!self.established && !self.failed && !self.closed, "{event:?} again or late");
                    assert_eq!(peer, self.peer_key, "established with an identity the peer does not hold");
                    assert!(accepts(self.role, node_id(0), peer.node_id()), "established with a refused identity");
                    assert_eq!(self.attacked.peer(), Some(peer));
                    self.established = true;
                }
                ChannelEvent::Data(data) => {
                    assert!(self.established && !self.peer_finished && !self.ended(), "data out of place");
                    assert!(!data.is_empty() && data.len() <= self.config.max_frame);
                    self.delivered.extend_from_slice(&data);
                    assert!(self.peer_sent.starts_with(&self.delivered), "delivered what the peer never sent");
                }
                ChannelEvent::PeerFinished => {
                    assert!(self.established && !self.peer_finished && !self.ended(), "PeerFinished out of place");
                    assert_eq!(self.delivered, self.peer_sent, "PeerFinished before all the peer's data");
                    self.peer_finished = true;
                }
                ChannelEvent::Failed(_) => {
                    assert!(!self.ended(), "{event:?} after the end");
                    self.failed = true;
                }
                ChannelEvent::Closed => {
                    assert!(!self.closed, "Closed twice");
                    self.closed = true;
                }
                ChannelEvent::FinishAcknowledged => {
                    assert!(self.finished && !self.acked && !self.ended(), "FinishAcknowledged out of place");
                    if !self.forged {
                        assert_eq!(self.peer_got, self.sent, "acknowledged before the peer had everything");
                    }
                    self.acked = true;
                }
            }
        }
        assert_eq!(self.attacked.is_finish_acknowledged(), self.acked);
        assert_eq!(self.attacked.stats().bytes_in, self.delivered.len() as u64);
        assert_eq!(self.attacked.is_ended(), self.ended());
        assert_eq!(self.attacked.is_established(), self.established && !self.ended());
        assert_eq!(self.attacked.is_peer_finished(), self.peer_finished);
        let bound = self.config.send_buffer.max(FRAME_HEADER_LEN + HANDSHAKE_MAX_LEN) + 2 * wire_len(0);
        assert!(self.attacked.pending_transmit().len() <= bound, "{} pending", self.attacked.pending_transmit().len());
        if self.ended() {
            assert!(self.attacked.pending_transmit().is_empty(), "bytes pending after the end");
            assert_eq!(self.attacked.poll_timeout(), None);
        } else if self.established {
            assert_eq!(self.attacked.poll_timeout(), None);
        } else {
            assert_eq!(self.attacked.poll_timeout(), Some(self.deadline));
            assert!(self.now < self.deadline, "handshake alive past its deadline");
        }
    }

    fn pattern(&mut self, len: usize) -> Vec<u8> {
        self.counter = self.counter.wrapping_add(1);
        let c = self.counter;
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(c)).collect()
    }

    fn send(&mut self, len: u16) {
        let data = self.pattern(usize::from(len % 4096));
        let room = self.attacked.send_room();
        let result = self.attacked.send(self.now, &data);
        match result {
            Ok(n) => {
                assert!(self.established && !self.ended() && !self.finished);
                assert_eq!(n, data.len().min(room), "send took other than send_room said");
                self.sent.extend_from_slice(&data[..n]);
            }
            Err(ChannelApiError::NotEstablished) => assert!(!self.established && !self.ended()),
            Err(ChannelApiError::Closed) => assert!(self.ended()),
            Err(ChannelApiError::Finished) => assert!(self.finished && !self.ended()),
            Err(ChannelApiError::SendBufferFull) => {
                assert!(self.established && !self.ended() && room == 0 && !data.is_empty())
            }
            Err(e) => panic!("send: {e:?}"),
        }
    }

    fn finish(&mut self) {
        match self.attacked.finish(self.now) {
            Ok(()) => {
                assert!(self.established && !self.ended());
                self.finished = true;
            }
            Err(ChannelApiError::NotEstablished) => assert!(!self.established && !self.ended()),
            Err(ChannelApiError::Closed) => assert!(self.ended()),
            Err(e) => panic!("finish: {e:?}"),
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Raw { bytes, cuts } => {
                self.tainted |= !bytes.is_empty();
                self.feed(&bytes, cuts);
            }
            Op::PeerFrame { mutation, cuts } => {
                let Some(mut frame) = self.from_peer.pop_front() else { return };
                match mutation {
                    Mutation::None => {}
                    Mutation::FlipBit(bit) => {
                        let bit = usize::from(bit) % (frame.len() * 8);
                        frame[bit / 8] ^= 1 << (bit % 8);
                        self.tainted = true;
                    }
                    Mutation::Truncate(keep) => {
                        frame.truncate(usize::from(keep) % frame.len());
                        self.tainted = true;
                    }
                    Mutation::Duplicate => {
                        let again = frame.clone();
                        frame.extend_from_slice(&again);
                        self.tainted = true;
                    }
                    Mutation::Reorder => {
                        if let Some(next) = self.from_peer.pop_front() {
                            self.from_peer.push_front(frame);
                            frame = next;
                            self.tainted = true;
                        }
                    }
                    Mutation::Drop => {
                        self.tainted = true;
                        return;
                    }
                }
                self.feed(&frame, cuts);
            }
            Op::PeerFrames { cuts } => self.peer_frames(cuts),
            Op::ToPeer => self.to_peer(),
            Op::ToPeerPart { len } => {
                let pending = self.attacked.pending_transmit();
                let part = pending[..usize::from(len).min(pending.len())].to_vec();
                self.attacked.consume_transmit(part.len());
                self.peer.handle_input(self.now, &part);
                self.collect_peer();
            }
            Op::Reflect => {
                let bytes = take_all(&mut self.attacked);
                self.tainted |= !bytes.is_empty();
                self.attacked.handle_input(self.now, &bytes);
            }
            Op::Replay { which, cuts } => {
                let recorded = &recorded()[usize::from(matches!(self.role, Role::Initiator { .. }))];
                let frame = recorded[usize::from(which) % recorded.len()].clone();
                self.tainted = true;
                self.feed(&frame, cuts);
            }
            Op::PeerSend { len } => {
                let data = self.pattern(usize::from(len % 4096));
                if let Ok(n) = self.peer.send(self.now, &data) {
                    self.peer_sent.extend_from_slice(&data[..n]);
                }
                self.collect_peer();
            }
            Op::PeerFinish => {
                self.peer_finishing |= self.peer.finish(self.now).is_ok();
                self.collect_peer();
            }
            Op::PeerForge { kind, len } => {
                let kind = kind % 6;
                let payload = self.pattern(usize::from(len % 3));
                let finished = self.peer.is_finished();
                if self.peer.seal_raw(kind, &payload).is_ok() {
                    if kind == KIND_DATA && !payload.is_empty() && !finished {
                        // A well-formed DATA frame before the peer's FINISH: genuine data as far
                        // as anyone can tell.
                        self.peer_sent.extend_from_slice(&payload);
                    } else {
                        self.forged = true;
                        self.tainted = true;
                    }
                }
                self.collect_peer();
            }
            Op::Advance { ms } => {
                self.now = self.now.saturating_add(Duration::from_millis(u64::from(ms)));
                self.attacked.handle_timeout(self.now);
            }
            Op::ToDeadline { extra } => {
                self.now = self.now.max(self.deadline.saturating_add(Duration::from_millis(u64::from(extra))));
                self.attacked.handle_timeout(self.now);
            }
            Op::EndOfStream => {
                let clean = self.established && self.peer_finished && !self.ended();
                self.attacked.handle_end_of_stream(self.now);
                self.tainted = true;
                // A clean end (after the FINISH, between frames) is no failure; anything else is.
                if !clean {
                    assert!(self.attacked.is_ended());
                }
            }
            Op::Send { len } => self.send(len),
            Op::Finish => self.finish(),
            Op::Close => {
                self.attacked.close(self.now);
                self.tainted = true;
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let k = keys();
    let max_frame = MAX_FRAMES[usize::from(input.frame) % MAX_FRAMES.len()];
    let config = ChannelConfig {
        max_frame,
        send_buffer: wire_len(max_frame) * (1 + usize::from(input.buffer % 4)) + usize::from(input.buffer / 4),
        handshake_timeout: HANDSHAKE_TIMEOUT,
    };
    let peer_index = match input.peer {
        PeerIs::Genuine => 1,
        PeerIs::Stranger => 2,
        PeerIs::Itself => 0,
    };
    let (role, peer_role) = if input.attacked_initiates {
        (Role::Initiator { expect: node_id(1) }, Role::Responder { expect: None })
    } else {
        let expect = match input.expect {
            Expect::Anyone => None,
            Expect::Genuine => Some(node_id(1)),
            Expect::Stranger => Some(node_id(2)),
            Expect::Itself => Some(node_id(0)),
        };
        (Role::Responder { expect }, Role::Initiator { expect: node_id(0) })
    };
    let now = Instant::from_millis(1_000);
    let attacked = Channel::new(config, &k[0], role, CONTEXT, [1; 32], now).unwrap();
    let peer = Channel::new(config, &k[peer_index], peer_role, CONTEXT, [2; 32], now).unwrap();
    let peer_key = k[peer_index].identity();
    let mutual = accepts(role, node_id(0), peer_key.node_id()) && accepts(peer_role, peer_key.node_id(), node_id(0));
    let mut h = H {
        now,
        deadline: now.saturating_add(HANDSHAKE_TIMEOUT),
        config,
        attacked,
        role,
        peer,
        peer_key,
        mutual,
        from_peer: VecDeque::new(),
        peer_sent: Vec::new(),
        delivered: Vec::new(),
        sent: Vec::new(),
        peer_got: Vec::new(),
        established: false,
        peer_finished: false,
        failed: false,
        closed: false,
        finished: false,
        peer_failed: false,
        acked: false,
        peer_acked: false,
        peer_finishing: false,
        forged: false,
        tainted: false,
        counter: 0,
    };
    h.collect_peer();
    h.check();
    if input.handshake_first {
        for _ in 0..3 {
            h.to_peer();
            h.peer_frames([0; 3]);
            h.check();
        }
        assert_eq!(h.established, mutual, "a genuine handshake");
    }
    for op in input.ops.into_iter().take(256) {
        h.apply(op);
        h.check();
    }
    // A session the network never disturbed completes: the handshake (when both sides accept
    // each other), and every byte sent either way arrives.
    if !h.tainted && !h.ended() && !h.peer_failed {
        for _ in 0..4 {
            h.to_peer();
            h.peer_frames([0; 3]);
            h.check();
        }
        assert_eq!(h.established, mutual, "a handshake on pristine bytes");
        // (When the attacked side refuses the peer's identity, the peer, which accepted it, may
        // have sealed data that never arrives: the handshake fails first.)
        if mutual {
            assert_eq!(h.delivered, h.peer_sent, "pristine data lost");
            assert_eq!(h.peer_got, h.sent, "pristine data lost on the way to the peer");
            assert_eq!(h.acked, h.finished, "a FINISH unacknowledged on pristine bytes");
            assert_eq!(h.peer_acked, h.peer_finishing, "the peer's FINISH unacknowledged");
        }
    }
    // Close (twice): one Closed at most, nothing pending, no deadline.
    h.attacked.close(h.now);
    h.attacked.close(h.now);
    h.check();
    assert!(h.closed && h.attacked.is_ended());
    let late = h.peer.pending_transmit().len();
    h.attacked.handle_input(h.now, &vec![0; late.max(1)]);
    h.check();
    assert_eq!(h.attacked.send(h.now, b"x"), Err(ChannelApiError::Closed));
});
