//! The far end of a punched connection as the punch fuzz targets play it (shared by
//! `punch_session` and `punch_node_session`).
//!
//! Every connection that comes up gets a [`Conn`]: the channel context it was born with, which
//! side leads, every byte the machine wrote on it and every byte handed to the machine. On demand
//! a [`Speaker`] takes the far end: a real [`Channel`] with a real identity, fed everything the
//! machine wrote there, whose output the target hands back as stream bytes (whole, cut, tampered
//! with, or not at all). The speaker is the genuine peer (the machine's peer identity, the
//! right role and context), or an impostor: another identity (our own among them), another
//! session or round in the context, or the wrong role. Whether the machine may take the
//! connection, and whether it must reject it, follows from what it was given:
//!
//! - it may take (Connected, an established channel) only a connection whose bytes began with
//!   the genuine speaker's whole handshake ([`Conn::may_win`]);
//! - while it got exactly a prefix of what a genuine speaker produced ([`Conn::clean`]), the
//!   speaker never fails (the machine's handshake messages prove our identity);
//! - a flipped bit in the body of a whole frame of a clean connection (except the initiator's
//!   first message, whose ephemeral key nothing authenticates yet) fails its channel in that very
//!   input ([`Delivery::must_fail`]).

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use p2pd_channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelFailure, ChannelKeys, Identity, Instant, NodeId,
    PublicKey, Role, FRAME_HEADER_LEN,
};

/// How many fixed identities the targets pick from.
pub const IDENTITIES: usize = 4;

/// The first message (the initiator's ephemeral key) as a frame on the stream.
pub const MSG1_FRAME: usize = FRAME_HEADER_LEN + 32;
/// The second (the responder's ephemeral, encrypted static key and identity proof).
pub const MSG2_FRAME: usize = FRAME_HEADER_LEN + 32 + 48 + p2pd_channel::PROOF_LEN + 16;
/// The third (the initiator's encrypted static key and identity proof).
pub const MSG3_FRAME: usize = FRAME_HEADER_LEN + 48 + p2pd_channel::PROOF_LEN + 16;

/// Most bytes a connection keeps of what the machine wrote and what it was given.
const LOG_CAP: usize = 1 << 20;

struct Key {
    identity: Identity,
    keys: ChannelKeys,
}

fn all() -> &'static [Key; IDENTITIES] {
    static KEYS: OnceLock<[Key; IDENTITIES]> = OnceLock::new();
    KEYS.get_or_init(|| {
        std::array::from_fn(|i| {
            let identity = Identity::from_secret_bytes(&[i as u8 + 1; 32]).unwrap();
            let keys = ChannelKeys::new(&identity, [i as u8 + 0x40; 32]).unwrap();
            Key { identity, keys }
        })
    })
}

/// Identity `k` (of [`IDENTITIES`]).
pub fn identity(k: usize) -> &'static Identity {
    &all()[k % IDENTITIES].identity
}

/// Identity `k`'s channel keys (built once: signing the proof is the expensive part).
pub fn channel_keys(k: usize) -> &'static ChannelKeys {
    &all()[k % IDENTITIES].keys
}

pub fn node_id(k: usize) -> NodeId {
    identity(k).node_id()
}

pub fn public_key(k: usize) -> PublicKey {
    identity(k).public_key()
}

/// Which fixed identity `id` is.
pub fn key_of(id: NodeId) -> Option<usize> {
    (0..IDENTITIES).find(|&k| node_id(k) == id)
}

/// The punch's channel context: "p2pd-punch" ‖ session id ‖ round.
pub fn context(session: [u8; 16], round: u8) -> Vec<u8> {
    let mut c = b"p2pd-punch".to_vec();
    c.extend_from_slice(&session);
    c.push(round);
    c
}

/// Who takes the far end of a connection.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Kind {
    /// The machine's peer, right role and context.
    Genuine,
    /// Identity `k` (maybe the peer after all, or the machine's own), right role and context.
    Identity(u8),
    /// The peer, with a byte of the session id changed.
    WrongSession(u8),
    /// The peer, with another round.
    WrongRound(u8),
    /// The peer, initiating when it should respond or the other way round.
    WrongRole,
}

/// What happens to the speaker's bytes on their way to the machine.
#[derive(Arbitrary, Debug, Clone)]
pub enum Tamper {
    None,
    /// One bit flipped (at an offset into what is delivered).
    Flip {
        at: u16,
        bit: u8,
    },
    /// Only the first `keep` bytes arrive; the rest is lost.
    Truncate {
        keep: u16,
    },
    /// Junk right behind (in the same read).
    Junk(Vec<u8>),
    /// The speaker first seals a frame no genuine channel sends on its own, with its session
    /// keys (`Channel::seal_raw`): kind `kind % 6` (0 an empty DATA, 1 FINISH, 2 FINISH-ACK,
    /// 3.. unknown) with `len % 2` bytes (none for DATA). The connection is no longer clean.
    Forge {
        kind: u8,
        len: u8,
    },
}

/// The scripted far end of one connection.
pub struct Speaker {
    pub key: usize,
    /// The machine's peer, in the right role and context.
    pub genuine: bool,
    pub initiator: bool,
    pub ch: Channel,
    /// Every byte its channel wrote, in order, and the start of every frame in it.
    pub produced: Vec<u8>,
    frames: Vec<usize>,
    /// How much of `produced` was handed over (or lost) already.
    pub next: usize,
    /// `produced.len()` when its handshake completed.
    pub hs_len: Option<usize>,
    /// Plaintext it sealed after the handshake, with (end in `produced`, `sealed` length) after
    /// every frame of it, and the offset in `produced` right after its FINISH.
    pub sealed: Vec<u8>,
    marks: Vec<(usize, usize)>,
    pub finish_end: Option<usize>,
    /// What it opened: the machine's plaintext, and whether the machine's FINISH came.
    pub opened: Vec<u8>,
    pub peer_finished: bool,
    /// The machine acknowledged the speaker's FINISH.
    pub finish_acked: bool,
    /// The speaker sealed a forged frame ([`Tamper::Forge`]).
    pub forged: bool,
    /// The identity the machine proved to it, and its failure.
    pub proved: Option<PublicKey>,
    pub failed: Option<ChannelFailure>,
}

impl Speaker {
    fn pull(&mut self) {
        let out = self.ch.pending_transmit().to_vec();
        self.ch.consume_transmit(out.len());
        self.produced.extend_from_slice(&out);
        // Index the frames (the channel writes whole frames only).
        let mut at = self
            .frames
            .last()
            .map_or(0, |&s| s + frame_len(&self.produced, s));
        while at + FRAME_HEADER_LEN <= self.produced.len() {
            self.frames.push(at);
            at += frame_len(&self.produced, at);
        }
        assert_eq!(at, self.produced.len(), "a channel writes whole frames");
        if self.hs_len.is_none() && self.ch.is_established() {
            self.hs_len = Some(self.produced.len());
        }
        while let Some(ev) = self.ch.poll_event() {
            match ev {
                ChannelEvent::Established { peer } => self.proved = Some(peer),
                ChannelEvent::Data(d) => self.opened.extend_from_slice(&d),
                ChannelEvent::PeerFinished => self.peer_finished = true,
                ChannelEvent::FinishAcknowledged => {
                    assert!(self.finish_end.is_some(), "an ack of a FINISH never sealed");
                    self.finish_acked = true;
                }
                ChannelEvent::Failed(f) => self.failed = Some(f),
                ChannelEvent::Closed => {}
            }
        }
    }

    pub fn feed(&mut self, now: Instant, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.ch.handle_input(now, bytes);
            self.pull();
        }
    }

    /// Seals `data` (when established and not finished) and maybe the FINISH.
    pub fn seal(&mut self, now: Instant, data: &[u8], finish: bool) {
        if !data.is_empty() {
            if let Ok(n) = self.ch.send(now, data) {
                self.sealed.extend_from_slice(&data[..n]);
                self.pull();
                self.marks.push((self.produced.len(), self.sealed.len()));
            }
        }
        if finish && self.finish_end.is_none() && self.ch.finish(now).is_ok() {
            self.pull();
            self.finish_end = Some(self.produced.len());
        }
        self.pull();
    }

    /// The frame of `produced` holding offset `at`: (start, end).
    fn frame_at(&self, at: usize) -> Option<(usize, usize)> {
        let i = self.frames.partition_point(|&s| s <= at).checked_sub(1)?;
        let start = self.frames[i];
        Some((start, start + frame_len(&self.produced, start)))
    }
}

fn frame_len(bytes: &[u8], start: usize) -> usize {
    FRAME_HEADER_LEN + usize::from(u16::from_be_bytes([bytes[start], bytes[start + 1]]))
}

/// Bytes for the machine, and whether its channel must fail on them.
pub struct Delivery {
    pub bytes: Vec<u8>,
    pub must_fail: bool,
}

/// One connection the machine has up, and whoever is at its far end.
pub struct Conn {
    /// The context the machine's channel is bound to (session and round when it came up).
    pub ctx: Vec<u8>,
    /// Whether the machine leads (initiates) here.
    pub machine_leads: bool,
    /// The machine's peer (the genuine far end), if it is one of the fixed identities.
    pub peer_key: Option<usize>,
    /// Our identity (the machine's).
    pub ours: usize,
    pub speaker: Option<Speaker>,
    /// Everything the machine wrote, and everything it was handed.
    pub heard: Vec<u8>,
    pub delivered: Vec<u8>,
    /// More than the logs keep was written (a speaker can no longer start) or handed (the
    /// connection counts as not clean).
    heard_overflow: bool,
    delivered_overflow: bool,
}

impl Conn {
    pub fn new(ctx: Vec<u8>, machine_leads: bool, peer_key: Option<usize>, ours: usize) -> Self {
        Conn {
            ctx,
            machine_leads,
            peer_key,
            ours,
            speaker: None,
            heard: Vec::new(),
            delivered: Vec::new(),
            heard_overflow: false,
            delivered_overflow: false,
        }
    }

    /// The machine wrote `bytes` here: the speaker reads them.
    pub fn machine_wrote(&mut self, now: Instant, bytes: &[u8]) {
        self.log_heard(bytes);
        if let Some(s) = &mut self.speaker {
            s.feed(now, bytes);
        }
        self.check_speaker();
    }

    fn log_heard(&mut self, bytes: &[u8]) {
        if self.heard.len() + bytes.len() > LOG_CAP {
            self.heard_overflow = true;
        } else {
            self.heard.extend_from_slice(bytes);
        }
    }

    /// The speaker, created as `kind` if there is none yet (it reads what the machine wrote so
    /// far; `seed` keys its ephemeral key).
    pub fn speaker(&mut self, now: Instant, kind: Kind, seed: u32) -> Option<&mut Speaker> {
        if self.speaker.is_none() && !self.heard_overflow {
            let peer = self.peer_key?;
            let (mut key, mut ctx, mut initiator) = (peer, self.ctx.clone(), !self.machine_leads);
            match kind {
                Kind::Genuine => {}
                Kind::Identity(k) => key = usize::from(k) % IDENTITIES,
                Kind::WrongSession(b) => {
                    let at = 10 + usize::from(b) % 16;
                    ctx[at] ^= 1 << (b % 8);
                }
                Kind::WrongRound(d) => {
                    let last = ctx.len() - 1;
                    ctx[last] = ctx[last].wrapping_add(d.max(1));
                }
                Kind::WrongRole => initiator = !initiator,
            }
            let genuine = key == peer && ctx == self.ctx && initiator != self.machine_leads;
            let ours = node_id(self.ours);
            let role = if initiator {
                Role::Initiator { expect: ours }
            } else {
                Role::Responder { expect: Some(ours) }
            };
            let mut s32 = [0x5a; 32];
            s32[..4].copy_from_slice(&seed.to_be_bytes());
            let ch = Channel::new(
                ChannelConfig::default(),
                channel_keys(key),
                role,
                &ctx,
                s32,
                now,
            )
            .unwrap();
            let mut s = Speaker {
                key,
                genuine,
                initiator,
                ch,
                produced: Vec::new(),
                frames: Vec::new(),
                next: 0,
                hs_len: None,
                sealed: Vec::new(),
                marks: Vec::new(),
                finish_end: None,
                opened: Vec::new(),
                peer_finished: false,
                finish_acked: false,
                forged: false,
                proved: None,
                failed: None,
            };
            s.pull();
            let heard = self.heard.clone();
            s.feed(now, &heard);
            self.speaker = Some(s);
            self.check_speaker();
        }
        self.speaker.as_mut()
    }

    /// Whether the machine got exactly a prefix of what a speaker produced (nothing at all if
    /// there is none).
    pub fn clean(&self) -> bool {
        !self.delivered_overflow
            && match &self.speaker {
                Some(s) => !s.forged && s.produced.starts_with(&self.delivered),
                None => self.delivered.is_empty(),
            }
    }

    /// Whether the machine may take this connection: its bytes began with every handshake
    /// message of the genuine peer (the responder's second, or the initiator's first and third).
    pub fn may_win(&self) -> bool {
        let Some(s) = self.speaker.as_ref().filter(|s| s.genuine) else {
            return false;
        };
        let handshake = if s.initiator {
            s.hs_len
        } else {
            s.frames.first().map(|&f| frame_len(&s.produced, f))
        };
        handshake.is_some_and(|n| self.delivered.starts_with(&s.produced[..n]))
    }

    /// What the machine's channel must have opened by now, if it got exactly the genuine
    /// speaker's bytes: the plaintext of every whole frame it was handed.
    pub fn must_have_opened(&self) -> Option<&[u8]> {
        let s = self
            .speaker
            .as_ref()
            .filter(|s| s.genuine && self.clean())?;
        let n = s
            .marks
            .iter()
            .take_while(|(end, _)| *end <= self.delivered.len())
            .last()
            .map_or(0, |(_, n)| *n);
        Some(&s.sealed[..n])
    }

    /// What the speaker says to the machine now: everything it produced since the last
    /// delivery, tampered with as asked.
    pub fn deliver(&mut self, tamper: &Tamper) -> Delivery {
        let clean = self.clean();
        let delivered_len = self.delivered.len();
        let Some(s) = &mut self.speaker else {
            return Delivery {
                bytes: Vec::new(),
                must_fail: false,
            };
        };
        if let Tamper::Forge { kind, len } = tamper {
            let kind = kind % 6;
            let payload = if kind == 0 { Vec::new() } else { vec![0x5a; usize::from(len % 2)] };
            if s.ch.seal_raw(kind, &payload).is_ok() {
                s.forged = true;
                s.pull();
            }
        }
        let start = s.next;
        let mut bytes = s.produced[start..].to_vec();
        s.next = s.produced.len();
        let mut must_fail = false;
        match tamper {
            Tamper::None => {}
            Tamper::Flip { at, bit } => {
                if !bytes.is_empty() {
                    let i = usize::from(*at) % bytes.len();
                    bytes[i] ^= 1 << (bit % 8);
                    // A flipped bit in the body of a whole frame that follows clean bytes fails
                    // the machine's channel, unless it is the initiator's first message (a bare
                    // ephemeral key: the next message fails instead).
                    let abs = start + i;
                    if let Some((fs, _)) = s.frame_at(abs) {
                        let first_of_initiator = s.initiator && fs == 0;
                        must_fail = clean
                            && delivered_len == start
                            && s.genuine
                            && abs >= fs + FRAME_HEADER_LEN
                            && !first_of_initiator;
                    }
                }
            }
            Tamper::Truncate { keep } => bytes.truncate(usize::from(*keep)),
            Tamper::Junk(junk) => bytes.extend(junk.iter().take(64)),
            Tamper::Forge { .. } => {}
        }
        Delivery { bytes, must_fail }
    }

    /// The machine was handed `bytes` here.
    pub fn handed(&mut self, bytes: &[u8]) {
        if self.delivered.len() + bytes.len() > LOG_CAP {
            self.delivered_overflow = true;
        } else {
            self.delivered.extend_from_slice(bytes);
        }
    }

    /// A genuine speaker fed only by a machine that got exactly its bytes never fails, and the
    /// identity the machine proves is ours.
    pub fn check_speaker(&self) {
        let Some(s) = &self.speaker else { return };
        if let Some(p) = s.proved {
            assert_eq!(
                p,
                public_key(self.ours),
                "the machine proved another identity"
            );
        }
        if s.genuine && self.clean() {
            assert_eq!(
                s.failed, None,
                "the genuine peer's channel failed on the machine's bytes"
            );
        }
    }
}
