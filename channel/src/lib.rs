//! # p2pd-channel
//!
//! A secure channel over any byte stream (a punched TCP connection, a direct or relayed one), as a
//! sans-IO machine: [`Channel`] takes the bytes read from the stream and the time, and gives the
//! bytes to write, the peer's proven identity and the plaintext it sent. It reads no clock, opens
//! no socket and draws no randomness of its own: the caller passes `now` and a 32-byte seed.
//!
//! Every stream between peers runs through it, so a stranger who connects, a NAT, a broker or a
//! relay on the path learns nothing of what flows and can inject nothing: the channel ends in a
//! typed [`ChannelFailure`] instead.
//!
//! ## Handshake
//!
//! `Noise_XX_25519_ChaChaPoly_SHA256` (the [`snow`] crate; no hand-written cryptography), with the
//! Noise static key bound to the node's secp256k1 [`Identity`] as libp2p-noise does: each side's
//! handshake payload carries its identity public key and its signature over the Noise static key.
//!
//! ```text
//! prologue   = "p2pd-channel/2" ‖ len(context):u8 ‖ context        (both sides must agree)
//! -> msg 1   = e                                                    payload: empty
//! <- msg 2   = e, ee, s, es                                         payload: proof(responder)
//! -> msg 3   = s, se                                                payload: proof(initiator)
//! proof(X)   = identity_public_key(X):33 (compressed SEC1) ‖ signature:64 (r ‖ s)
//! signature  = ECDSA-secp256k1-SHA256 over "p2pd-channel static key:" ‖ noise_static_public(X):32
//! ```
//!
//! The initiator names the identity it expects ([`NodeId`]); if the responder proves another one
//! the channel fails with [`ChannelFailure::WrongPeer`] before the initiator sends anything of its
//! own. The responder may name one too, or learn the initiator's from
//! [`ChannelEvent::Established`]. Neither side accepts its own identity from the other end unless
//! it asked for it (a connection reflected back to its sender fails as `WrongPeer`). The
//! `context` (at most 255 bytes; the punch puts its session id and round there) binds a handshake
//! to one use: a handshake recorded elsewhere and replayed here fails to decrypt.
//!
//! ## Frames
//!
//! Every handshake message and every transport message is one frame on the stream:
//!
//! ```text
//! frame      = length:u16 (big-endian) ‖ body:length
//! handshake  : body is a Noise handshake message, length <= HANDSHAKE_MAX_LEN (256)
//! transport  : body = ChaCha20-Poly1305(plaintext) ‖ tag:16, 17 <= length <= max_frame + 17
//! plaintext  = kind:u8 ‖ payload
//!   kind 0   DATA        payload: application bytes, 1 ..= max_frame (default 16 KiB)
//!   kind 1   FINISH      payload: empty. The sender's authenticated half-close
//!   kind 2   FINISH-ACK  payload: empty. "I read your FINISH and every byte before it"
//!   other    the channel fails: ChannelFailure::UnknownKind
//! ```
//!
//! `max_frame` still counts application bytes: a frame carries up to `max_frame` of them and is
//! [`FRAME_OVERHEAD`] (19) bytes longer on the wire (the kind byte is the one more than in
//! version 1, whose empty plaintext was FINISH; the prologue names version 2, so a version-1
//! peer fails the handshake instead of misreading frames). `max_frame` is at most 65518 now.
//!
//! Why a kind byte: the kind is inside the authenticated plaintext, so nobody on the path can
//! forge, drop or turn one kind into another without [`ChannelFailure::Tampered`]. Keeping
//! "empty = FINISH" left no authenticated way to tell an ack from data (every non-empty
//! plaintext was data) or from FINISH (both empty, and their order differs when FINISHes cross);
//! a marker outside the ciphertext could be stripped on the path. One byte per frame (at most
//! 0.006 % of a full frame) buys room for later control kinds too.
//!
//! ### Half-close and its acknowledgement
//!
//! [`Channel::finish`] seals FINISH after every DATA sent so far; the peer reports
//! [`ChannelEvent::PeerFinished`] after the last [`ChannelEvent::Data`], and may go on sending.
//! On reading a FINISH the channel seals one FINISH-ACK at once, by itself: the FINISH was read
//! in order, so every DATA before it has been authenticated and handed out as events (the bytes
//! are out of the network). The ack is a control frame: it is sealed even after our own FINISH,
//! does not end our sending side (we may still send DATA and our own FINISH after it) and never
//! passes for our FINISH. When the peer's ack of our FINISH comes, the channel reports
//! [`ChannelEvent::FinishAcknowledged`] once: the peer has every byte we sent. Once a side has
//! the peer's FINISH and the ack of its own, closing the stream loses nothing, even over a path
//! without half-close (a TURN relay resets both legs when one closes). FINISHes may cross: each
//! side acks the other's. An ack when our FINISH was not sealed, or a second one, is
//! [`ChannelFailure::UnexpectedAck`]; DATA or FINISH after the peer's FINISH is
//! [`ChannelFailure::DataAfterFinish`] (its ack of our FINISH may still come); an empty
//! plaintext, empty DATA or a FINISH / FINISH-ACK with a payload is
//! [`ChannelFailure::BadPlaintext`].
//!
//! Transport frames use Noise's counter nonces, so a dropped, reordered, replayed or altered frame
//! fails authentication ([`ChannelFailure::Tampered`]). A length beyond the bound is
//! [`ChannelFailure::TooLarge`] as soon as the two length bytes arrive, so the receive buffer never
//! holds more than one bounded frame. The end of the underlying stream before the peer's FINISH
//! (or in the middle of a frame) is [`ChannelFailure::Truncated`]: a forged TCP FIN or RST cannot
//! pass for the end of the data.
//!
//! ## Driving it
//!
//! After every input ([`Channel::handle_input`], [`Channel::handle_end_of_stream`],
//! [`Channel::handle_timeout`]) and command ([`Channel::send`], [`Channel::finish`],
//! [`Channel::close`]), drain [`Channel::poll_transmit`] (bytes for the stream), then
//! [`Channel::poll_event`], then read [`Channel::poll_timeout`]. The same seeds and inputs give
//! the same bytes out, byte for byte.
//!
//! Runnable example: `cargo run -p p2pd-channel --example channel_in_memory`.
//!
//! A machine that owns a stream socket can hold a [`stream::SecureStream`] instead: the channel
//! plus the socket's send buffer under the runtime's flow control, `finish` and its `Shutdown`.
#![forbid(unsafe_code)]
// Strict lints: [workspace.lints] in the root Cargo.toml. Unit tests may also do unchecked
// arithmetic (clippy.toml lets them unwrap, expect, panic and index).
#![cfg_attr(test, allow(clippy::arithmetic_side_effects))]
#![warn(missing_docs)]

mod channel;
mod error;
mod frame;
mod keys;
mod resolver;
pub mod stream;

pub use channel::{Channel, ChannelConfig, ChannelEvent, ChannelStats, Role};
pub use error::{ChannelApiError, ChannelFailure, HandshakeError};
pub use frame::{
    FRAME_HEADER_LEN, FRAME_OVERHEAD, HANDSHAKE_MAX_LEN, KIND_DATA, KIND_FINISH, KIND_FINISH_ACK,
    KIND_LEN, TAG_LEN,
};
pub use keys::{ChannelKeys, SeedSource, PROOF_LEN};
pub use p2pd_proto::Instant;
pub use p2pd_signaling::{Identity, NodeId, PublicKey};

/// The Noise protocol name every channel speaks.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";

/// The first bytes of every channel's Noise prologue (the protocol and its version).
pub const PROLOGUE_PREFIX: &[u8] = b"p2pd-channel/2";

/// The most bytes of caller context a prologue carries.
pub const MAX_CONTEXT_LEN: usize = 255;

#[cfg(test)]
mod tests;
