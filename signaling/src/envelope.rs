//! Sealed envelopes: encrypted to the recipient, signed by the sender, fresh and not replayed.
//!
//! # Wire format v1
//!
//! All integers are big-endian.
//!
//! ```text
//! offset  length  field
//! 0       1       version = 1
//! 1       33      sender public key, compressed SEC1 (02|03 ‖ X)
//! 34      20      recipient node id (first 20 bytes of SHA-256 of the recipient's compressed key)
//! 54      8       timestamp: u64, Unix time in milliseconds (the sender's `now_ms`)
//! 62      16      nonce (caller-supplied randomness; unique per sender)
//! 78      4       L: u32, length of the ciphertext
//! 82      L       ciphertext: ECIES to the recipient's public key of
//!                 `sender public key (33, the same bytes as at offset 1) ‖ payload`, in eciespy's
//!                 default layout: eph_pk (65, uncompressed) ‖ gcm nonce (16) ‖ tag (16) ‖ AES-256-GCM
//!                 body, key = HKDF-SHA256(ikm = eph_pk ‖ uncompressed shared point);
//!                 L = 97 + 33 + payload length
//! 82+L    64      signature r ‖ s: ECDSA secp256k1 over SHA-256 of bytes [0, 82+L), low-S
//! ```
//!
//! Sizes: the payload is at most [`MAX_PAYLOAD`] bytes, so an envelope is at most [`MAX_ENVELOPE`]
//! bytes; the fixed overhead is [`OVERHEAD`] (276) bytes. Any eciespy-compatible
//! implementation can decrypt the ciphertext (it yields the 33-byte sender key, then the payload).
//!
//! # Determinism
//!
//! [`seal`] is a pure function of its inputs. The ECIES ephemeral key and GCM nonce are derived
//! with HKDF-SHA256 from the sender's secret key, keyed on (recipient key, timestamp, nonce,
//! SHA-256 of the payload), in the style of RFC 6979; the ECDSA signature uses RFC 6979 nonces. The
//! only randomness is the caller's 16-byte `nonce`, which must be fresh per envelope (the replay
//! cache keys on it).
//!
//! # Checks on open, in order
//!
//! Length and version framing, recipient node id, freshness (timestamp not older than
//! `max_age_ms` and not more than `max_future_ms` ahead of `now_ms`), sender key, replay cache,
//! then the signature (verified **before** any decryption), then decryption, then the sender key
//! inside the plaintext must equal the signer's ([`OpenError::SenderMismatch`]). Only an envelope
//! that passes everything enters the replay cache, so forgeries cannot fill it.
//!
//! **High-S signatures are rejected** ([`OpenError::BadSignature`]), not normalised: our own
//! signatures are always low-S, so accepting `(r, n - s)` would only make envelopes malleable.
//!
//! # Replay cache
//!
//! The [`Opener`] remembers the `(sender, nonce)` of the last `capacity` accepted envelopes, and
//! evicts the oldest first. To keep an evicted entry from being replayed while it is still inside
//! the freshness window, it also keeps a floor: the newest timestamp it has ever evicted. Any
//! envelope with a timestamp at or below the floor is rejected as [`OpenError::Replay`]. Size the
//! capacity for the expected message rate over `max_age_ms + max_future_ms`; if it is too small,
//! late but genuine envelopes are rejected, never replays accepted.
//!
//! # Why the sender key is inside the ciphertext too
//!
//! Plain encrypt-then-sign lets a third party strip the signature, put its own key in the header
//! and re-sign a ciphertext it cannot read ("surreptitious forwarding"): the recipient would then
//! attribute someone else's payload to it. The encrypted copy of the sender key binds the payload
//! to its author, so such an envelope fails with [`OpenError::SenderMismatch`].

use std::collections::{HashSet, VecDeque};
use std::fmt;

use hkdf::Hkdf;
use k256::NonZeroScalar;
use sha2::{Digest, Sha256};

use crate::ecies;
pub use crate::identity::SIGNATURE_LEN;
use crate::identity::{Identity, NodeId, PublicKey, NODE_ID_LEN, PUBLIC_KEY_LEN};

/// The wire format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Length of the envelope nonce.
pub const NONCE_LEN: usize = 16;
/// Length of everything before the ciphertext.
pub const HEADER_LEN: usize = 1 + PUBLIC_KEY_LEN + NODE_ID_LEN + 8 + NONCE_LEN + 4;
/// Fixed bytes an envelope adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + MIN_CIPHERTEXT + SIGNATURE_LEN;
/// The largest payload [`seal`] accepts and [`Opener::open`] returns.
pub const MAX_PAYLOAD: usize = 16 * 1024;
/// The largest envelope.
pub const MAX_ENVELOPE: usize = OVERHEAD + MAX_PAYLOAD;
const MIN_CIPHERTEXT: usize = ecies::OVERHEAD + PUBLIC_KEY_LEN;
const MAX_CIPHERTEXT: usize = MIN_CIPHERTEXT + MAX_PAYLOAD;

const OFF_SENDER: usize = 1;
const OFF_RECIPIENT: usize = OFF_SENDER + PUBLIC_KEY_LEN;
const OFF_TIMESTAMP: usize = OFF_RECIPIENT + NODE_ID_LEN;
const OFF_NONCE: usize = OFF_TIMESTAMP + 8;
const OFF_LEN: usize = OFF_NONCE + NONCE_LEN;

/// Why [`seal`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// The payload is longer than [`MAX_PAYLOAD`].
    TooLarge,
    /// The cryptography failed (not expected with valid keys).
    Crypto,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::TooLarge => write!(f, "payload larger than {MAX_PAYLOAD} bytes"),
            SealError::Crypto => f.write_str("encryption failed"),
        }
    }
}

impl std::error::Error for SealError {}

/// Why [`Opener::open`] rejected an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than its framing says (or than the fixed header).
    Truncated,
    /// Framing is inconsistent (trailing bytes, impossible ciphertext length, invalid sender key).
    Malformed,
    /// The version byte is not [`VERSION`].
    UnsupportedVersion(u8),
    /// Addressed to another node id.
    WrongRecipient,
    /// The signature is malformed, high-S, or does not verify.
    BadSignature,
    /// Older than the freshness window.
    Stale {
        /// How old it is, in milliseconds.
        age_ms: u64,
    },
    /// Further in the future than the allowed clock skew.
    FromFuture {
        /// How far ahead of `now_ms` it is, in milliseconds.
        ahead_ms: u64,
    },
    /// Seen before (same sender and nonce), or older than the replay cache's floor.
    Replay,
    /// Signed correctly but the ciphertext does not decrypt with our key.
    DecryptFailed,
    /// Decrypts, but the sender key inside the ciphertext is not the signer's: someone re-signed
    /// another sender's ciphertext.
    SenderMismatch,
    /// Larger than [`MAX_ENVELOPE`] or the ciphertext is longer than [`MAX_PAYLOAD`] allows.
    TooLarge,
}

impl OpenError {
    /// A short, stable name for the kind of error (`bad_signature`, `stale`, ...), without the
    /// details, for counting rejections by reason.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::Malformed => "malformed",
            OpenError::UnsupportedVersion(_) => "unsupported_version",
            OpenError::WrongRecipient => "wrong_recipient",
            OpenError::BadSignature => "bad_signature",
            OpenError::Stale { .. } => "stale",
            OpenError::FromFuture { .. } => "from_future",
            OpenError::Replay => "replay",
            OpenError::DecryptFailed => "decrypt_failed",
            OpenError::SenderMismatch => "sender_mismatch",
            OpenError::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Truncated => f.write_str("envelope truncated"),
            OpenError::Malformed => f.write_str("envelope malformed"),
            OpenError::UnsupportedVersion(v) => write!(f, "unsupported envelope version {v}"),
            OpenError::WrongRecipient => f.write_str("envelope addressed to another node"),
            OpenError::BadSignature => f.write_str("bad envelope signature"),
            OpenError::Stale { age_ms } => write!(f, "stale envelope ({age_ms} ms old)"),
            OpenError::FromFuture { ahead_ms } => {
                write!(f, "envelope from the future ({ahead_ms} ms ahead)")
            }
            OpenError::Replay => f.write_str("replayed envelope"),
            OpenError::DecryptFailed => f.write_str("envelope does not decrypt"),
            OpenError::SenderMismatch => f.write_str("envelope re-signed by another sender"),
            OpenError::TooLarge => f.write_str("envelope too large"),
        }
    }
}

impl std::error::Error for OpenError {}

/// A successfully opened envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The sender's public key (the signature verified under it).
    pub sender: PublicKey,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The sender's timestamp, Unix milliseconds.
    pub timestamp: u64,
    /// The envelope nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The decrypted payload.
    pub payload: Vec<u8>,
}

/// Derives the ECIES ephemeral scalar and GCM nonce for one envelope (see the module docs).
fn derive_ephemeral(
    sender: &Identity,
    recipient: &PublicKey,
    now_ms: u64,
    nonce: &[u8; NONCE_LEN],
    payload: &[u8],
) -> Option<(NonZeroScalar, [u8; ecies::NONCE_LEN])> {
    let secret = sender.secret_bytes();
    let hk = Hkdf::<Sha256>::new(Some(b"p2pd-signaling/v1/seal"), &secret);
    let mut info = Vec::with_capacity(PUBLIC_KEY_LEN + 8 + NONCE_LEN + 32 + 1);
    info.extend_from_slice(&recipient.to_bytes());
    info.extend_from_slice(&now_ms.to_be_bytes());
    info.extend_from_slice(nonce);
    info.extend_from_slice(&Sha256::digest(payload));
    info.push(0);
    for counter in 0u8..8 {
        if let Some(last) = info.last_mut() {
            *last = counter;
        }
        let mut okm = [0u8; 32 + ecies::NONCE_LEN];
        hk.expand(&info, &mut okm).ok()?;
        let (scalar, gcm) = okm.split_at(32);
        let repr: [u8; 32] = scalar.try_into().ok()?;
        if let Some(eph) = Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(repr.into())) {
            return Some((eph, gcm.try_into().ok()?));
        }
    }
    None
}

/// Seals `payload` from `sender` to `recipient` (see the [module docs](self) for the format).
/// `now_ms` is the current Unix time in milliseconds; `nonce` must be fresh random bytes.
pub fn seal(
    sender: &Identity,
    recipient: &PublicKey,
    now_ms: u64,
    nonce: [u8; NONCE_LEN],
    payload: &[u8],
) -> Result<Vec<u8>, SealError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(SealError::TooLarge);
    }
    let (eph, gcm_nonce) =
        derive_ephemeral(sender, recipient, now_ms, &nonce, payload).ok_or(SealError::Crypto)?;
    let ct_len = payload
        .len()
        .checked_add(MIN_CIPHERTEXT)
        .ok_or(SealError::TooLarge)?;
    let ct_len_u32 = u32::try_from(ct_len).map_err(|_| SealError::TooLarge)?;
    let mut out = Vec::with_capacity(OVERHEAD.saturating_add(payload.len()));
    out.push(VERSION);
    out.extend_from_slice(&sender.public_key().to_bytes());
    out.extend_from_slice(recipient.node_id().as_bytes());
    out.extend_from_slice(&now_ms.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct_len_u32.to_be_bytes());
    let sender_key = sender.public_key().to_bytes();
    let mut plaintext = Vec::with_capacity(PUBLIC_KEY_LEN.saturating_add(payload.len()));
    plaintext.extend_from_slice(&sender_key);
    plaintext.extend_from_slice(payload);
    ecies::encrypt(&mut out, recipient, &eph, &gcm_nonce, &plaintext).ok_or(SealError::Crypto)?;
    out.extend_from_slice(&sender.sign(&out));
    Ok(out)
}

/// Opens envelopes: checks framing, freshness, replay, signature, then decrypts. Holds a bounded
/// replay cache (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Opener {
    capacity: usize,
    max_age_ms: u64,
    max_future_ms: u64,
    order: VecDeque<([u8; PUBLIC_KEY_LEN], [u8; NONCE_LEN], u64)>,
    seen: HashSet<([u8; PUBLIC_KEY_LEN], [u8; NONCE_LEN])>,
    floor_ms: Option<u64>,
}

impl Opener {
    /// Default freshness window: envelopes up to 60 s old are accepted.
    pub const DEFAULT_MAX_AGE_MS: u64 = 60_000;
    /// Default clock skew: envelopes up to 5 s in the future are accepted.
    pub const DEFAULT_MAX_FUTURE_MS: u64 = 5_000;

    /// An opener remembering the last `capacity` envelopes (at least 1), with the default window.
    pub fn new(capacity: usize) -> Self {
        Self::with_window(
            capacity,
            Self::DEFAULT_MAX_AGE_MS,
            Self::DEFAULT_MAX_FUTURE_MS,
        )
    }

    /// An opener with an explicit freshness window.
    pub fn with_window(capacity: usize, max_age_ms: u64, max_future_ms: u64) -> Self {
        let capacity = capacity.max(1);
        Opener {
            capacity,
            max_age_ms,
            max_future_ms,
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
            floor_ms: None,
        }
    }

    /// The replay cache's capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many envelopes the replay cache holds now (never more than the capacity).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the replay cache is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether `(sender, nonce)` is in the replay cache.
    pub fn contains(&self, sender: &PublicKey, nonce: &[u8; NONCE_LEN]) -> bool {
        self.seen.contains(&(sender.to_bytes(), *nonce))
    }

    /// The newest timestamp evicted from the replay cache; envelopes at or below it are rejected.
    pub fn floor_ms(&self) -> Option<u64> {
        self.floor_ms
    }

    /// Opens `bytes` addressed to `recipient` at Unix time `now_ms` (milliseconds).
    pub fn open(
        &mut self,
        recipient: &Identity,
        now_ms: u64,
        bytes: &[u8],
    ) -> Result<Opened, OpenError> {
        let &version = bytes.first().ok_or(OpenError::Truncated)?;
        if version != VERSION {
            return Err(OpenError::UnsupportedVersion(version));
        }
        if bytes.len() > MAX_ENVELOPE {
            return Err(OpenError::TooLarge);
        }
        let header = bytes.get(..HEADER_LEN).ok_or(OpenError::Truncated)?;
        let sender_bytes: [u8; PUBLIC_KEY_LEN] = field(header, OFF_SENDER)?;
        let recipient_id: [u8; NODE_ID_LEN] = field(header, OFF_RECIPIENT)?;
        let timestamp = u64::from_be_bytes(field(header, OFF_TIMESTAMP)?);
        let nonce: [u8; NONCE_LEN] = field(header, OFF_NONCE)?;
        let ct_len = usize::try_from(u32::from_be_bytes(field(header, OFF_LEN)?))
            .map_err(|_| OpenError::TooLarge)?;
        if ct_len > MAX_CIPHERTEXT {
            return Err(OpenError::TooLarge);
        }
        if ct_len < MIN_CIPHERTEXT {
            return Err(OpenError::Malformed);
        }
        let signed_len = HEADER_LEN.checked_add(ct_len).ok_or(OpenError::TooLarge)?;
        let total = signed_len
            .checked_add(SIGNATURE_LEN)
            .ok_or(OpenError::TooLarge)?;
        if bytes.len() < total {
            return Err(OpenError::Truncated);
        }
        if bytes.len() > total {
            return Err(OpenError::Malformed);
        }
        if recipient_id != *recipient.node_id().as_bytes() {
            return Err(OpenError::WrongRecipient);
        }
        if timestamp <= now_ms {
            let age_ms = now_ms.saturating_sub(timestamp);
            if age_ms > self.max_age_ms {
                return Err(OpenError::Stale { age_ms });
            }
        } else {
            let ahead_ms = timestamp.saturating_sub(now_ms);
            if ahead_ms > self.max_future_ms {
                return Err(OpenError::FromFuture { ahead_ms });
            }
        }
        let sender = PublicKey::from_bytes(&sender_bytes).map_err(|_| OpenError::Malformed)?;
        if self.floor_ms.is_some_and(|floor| timestamp <= floor)
            || self.seen.contains(&(sender_bytes, nonce))
        {
            return Err(OpenError::Replay);
        }
        let signed = bytes.get(..signed_len).ok_or(OpenError::Truncated)?;
        let sig_bytes = bytes.get(signed_len..).ok_or(OpenError::Truncated)?;
        if !sender.verify(signed, sig_bytes) {
            return Err(OpenError::BadSignature);
        }
        let ciphertext = bytes
            .get(HEADER_LEN..signed_len)
            .ok_or(OpenError::Truncated)?;
        let mut payload =
            ecies::decrypt(&recipient.secret_key(), ciphertext).ok_or(OpenError::DecryptFailed)?;
        if payload.get(..PUBLIC_KEY_LEN) != Some(&sender_bytes[..]) {
            return Err(OpenError::SenderMismatch);
        }
        payload.drain(..PUBLIC_KEY_LEN);
        if payload.len() > MAX_PAYLOAD {
            return Err(OpenError::TooLarge);
        }
        self.remember(sender_bytes, nonce, timestamp);
        Ok(Opened {
            sender,
            node_id: sender.node_id(),
            timestamp,
            nonce,
            payload,
        })
    }

    fn remember(&mut self, sender: [u8; PUBLIC_KEY_LEN], nonce: [u8; NONCE_LEN], ts: u64) {
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some((s, n, t)) => {
                    self.seen.remove(&(s, n));
                    self.floor_ms = Some(self.floor_ms.map_or(t, |f| f.max(t)));
                }
                None => break,
            }
        }
        self.order.push_back((sender, nonce, ts));
        self.seen.insert((sender, nonce));
    }
}

/// The fixed-size field at `offset` of `header`.
fn field<const N: usize>(header: &[u8], offset: usize) -> Result<[u8; N], OpenError> {
    let end = offset.checked_add(N).ok_or(OpenError::Truncated)?;
    header
        .get(offset..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(OpenError::Truncated)
}
