//! Node identities: secp256k1 key pairs and the node ids derived from them.

use core::fmt;

use k256::ecdsa::signature::{Signer, Verifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Length of a compressed SEC1 public key.
pub const PUBLIC_KEY_LEN: usize = 33;
/// Length of a [`NodeId`].
pub const NODE_ID_LEN: usize = 20;
/// Length of a signature (`r ‖ s`).
pub const SIGNATURE_LEN: usize = 64;
/// Length of a secret key.
pub const SECRET_KEY_LEN: usize = 32;

/// The bytes are not a valid secp256k1 secret key (zero, or not below the group order), or the
/// randomness source kept producing such bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidKey;

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid secp256k1 key")
    }
}

impl std::error::Error for InvalidKey {}

/// A secp256k1 public key (always a valid curve point, never the identity).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    key: k256::PublicKey,
    compressed: [u8; PUBLIC_KEY_LEN],
}

impl PublicKey {
    /// Parses a SEC1 public key: 33-byte compressed or 65-byte uncompressed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidKey> {
        let key = k256::PublicKey::from_sec1_bytes(bytes).map_err(|_| InvalidKey)?;
        Ok(Self::from_k256(key))
    }

    pub(crate) fn from_k256(key: k256::PublicKey) -> Self {
        let mut compressed = [0u8; PUBLIC_KEY_LEN];
        let sec1 = k256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&key, true);
        for (dst, src) in compressed.iter_mut().zip(sec1.as_bytes()) {
            *dst = *src;
        }
        PublicKey { key, compressed }
    }

    /// The 33-byte compressed SEC1 encoding (`02|03 ‖ X`).
    pub fn to_bytes(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.compressed
    }

    /// The 65-byte uncompressed SEC1 encoding (`04 ‖ X ‖ Y`).
    pub fn to_uncompressed(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        let sec1 = k256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&self.key, false);
        for (dst, src) in out.iter_mut().zip(sec1.as_bytes()) {
            *dst = *src;
        }
        out
    }

    /// The node id of this key, see [`NodeId`].
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(self)
    }

    pub(crate) fn k256(&self) -> &k256::PublicKey {
        &self.key
    }

    /// Verifies a 64-byte `r ‖ s` ECDSA signature over SHA-256 of `msg` (see [`Identity::sign`]).
    /// High-S signatures are rejected, never normalised.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        Signature::from_slice(signature)
            .is_ok_and(|sig| VerifyingKey::from(self.key).verify(msg, &sig).is_ok())
    }
}

impl core::hash::Hash for PublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.compressed.hash(state);
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.compressed)
    }
}

/// A node id: the first 20 bytes (160 bits) of SHA-256 over the node's 33-byte compressed public
/// key. Displayed as 40 lowercase hex characters.
///
/// (p2pd uses the first 25 hex characters, 100 bits, of the same hash; ours is a longer prefix of
/// it, so a p2pd id is the first 25 characters of ours.)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; NODE_ID_LEN]);

impl NodeId {
    /// The node id of `key`.
    pub fn from_public_key(key: &PublicKey) -> Self {
        let digest = Sha256::digest(key.to_bytes());
        let mut id = [0u8; NODE_ID_LEN];
        for (dst, src) in id.iter_mut().zip(digest.iter()) {
            *dst = *src;
        }
        NodeId(id)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// A node's secp256k1 key pair. Protocol code never reads a global RNG: the secret comes from the
/// caller ([`Identity::from_secret_bytes`]) or from a caller-supplied randomness source
/// ([`Identity::generate`]); the runtime supplies OS randomness. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
}

impl Identity {
    /// The identity whose secret key is `secret` (big-endian scalar; must be in `1..n`).
    pub fn from_secret_bytes(secret: &[u8; SECRET_KEY_LEN]) -> Result<Self, InvalidKey> {
        let sk = k256::SecretKey::from_slice(secret).map_err(|_| InvalidKey)?;
        let public = PublicKey::from_k256(sk.public_key());
        Ok(Identity {
            signing: SigningKey::from(sk),
            public,
        })
    }

    /// A fresh identity from `fill`, which must fill its argument with cryptographically secure
    /// random bytes (for example `getrandom::fill` in the runtime). Draws again when the 32 bytes
    /// are not a valid scalar (probability about 2^-128); gives up with [`InvalidKey`] after 16
    /// draws, which only a broken source (for example all zeroes) can cause.
    pub fn generate(fill: &mut impl FnMut(&mut [u8])) -> Result<Self, InvalidKey> {
        let mut secret = [0u8; SECRET_KEY_LEN];
        for _ in 0..16 {
            fill(&mut secret);
            if let Ok(id) = Self::from_secret_bytes(&secret) {
                return Ok(id);
            }
        }
        Err(InvalidKey)
    }

    /// The secret key (32 bytes, big-endian), for persisting the identity. Handle with care.
    pub fn secret_bytes(&self) -> [u8; SECRET_KEY_LEN] {
        let mut out = [0u8; SECRET_KEY_LEN];
        for (dst, src) in out.iter_mut().zip(self.signing.to_bytes().iter()) {
            *dst = *src;
        }
        out
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The node id derived from the public key.
    pub fn node_id(&self) -> NodeId {
        self.public.node_id()
    }

    /// A 64-byte `r ‖ s` ECDSA secp256k1 signature over SHA-256 of `msg`: deterministic
    /// (RFC 6979) and low-S.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let sig: Signature = self.signing.sign(msg);
        let mut out = [0u8; SIGNATURE_LEN];
        for (dst, src) in out.iter_mut().zip(sig.to_bytes().iter()) {
            *dst = *src;
        }
        out
    }

    pub(crate) fn secret_key(&self) -> k256::SecretKey {
        k256::SecretKey::from(self.signing.as_nonzero_scalar())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}
