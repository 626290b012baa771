//! A node's channel keys: the Noise static key pair and the proof that binds it to the node's
//! identity, and the seed source that keys each channel's ephemeral key.

use core::fmt;

use p2pd_signaling::{Identity, PublicKey};
use p2pd_signaling::{PUBLIC_KEY_LEN, SIGNATURE_LEN};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::ChannelApiError;
use crate::resolver::SeededResolver;

/// The length of an identity proof: a compressed public key and a signature.
pub const PROOF_LEN: usize = PUBLIC_KEY_LEN + SIGNATURE_LEN;

/// What an identity signs to vouch for a Noise static key (followed by the key's 32 bytes).
const PROOF_DOMAIN: &[u8] = b"p2pd-channel static key:";

/// The length of an X25519 key.
pub(crate) const DH_LEN: usize = 32;

/// A node's keys for every channel it opens or accepts: an X25519 static key pair, and the proof
/// (its identity's public key and signature over the static public key) that every handshake
/// carries. Built once per node, since signing costs more than the rest of a handshake; the
/// identity's secret key is not kept. `Debug` never prints the secret.
#[derive(Clone)]
pub struct ChannelKeys {
    static_private: [u8; DH_LEN],
    static_public: [u8; DH_LEN],
    identity: PublicKey,
    proof: [u8; PROOF_LEN],
}

impl ChannelKeys {
    /// Keys for `identity`, the static key pair drawn from `seed` (32 secret random bytes: from
    /// the OS in a runtime, from the simulation's seed in a simulator).
    pub fn new(identity: &Identity, seed: [u8; 32]) -> Result<ChannelKeys, ChannelApiError> {
        let builder = snow::Builder::with_resolver(
            crate::NOISE_PARAMS
                .parse()
                .map_err(|_| ChannelApiError::Noise)?,
            Box::new(SeededResolver::new(seed)),
        );
        let pair = builder
            .generate_keypair()
            .map_err(|_| ChannelApiError::Noise)?;
        let static_private: [u8; DH_LEN] = pair
            .private
            .as_slice()
            .try_into()
            .map_err(|_| ChannelApiError::Noise)?;
        let static_public: [u8; DH_LEN] = pair
            .public
            .as_slice()
            .try_into()
            .map_err(|_| ChannelApiError::Noise)?;
        let signature = identity.sign(&proof_message(&static_public));
        let mut proof = [0u8; PROOF_LEN];
        let key = identity.public_key().to_bytes();
        for (dst, src) in proof.iter_mut().zip(key.iter().chain(signature.iter())) {
            *dst = *src;
        }
        Ok(ChannelKeys {
            static_private,
            static_public,
            identity: identity.public_key(),
            proof,
        })
    }

    /// The identity these keys prove.
    pub fn identity(&self) -> PublicKey {
        self.identity
    }

    /// The Noise static public key.
    pub fn static_public(&self) -> [u8; DH_LEN] {
        self.static_public
    }

    pub(crate) fn static_private(&self) -> &[u8; DH_LEN] {
        &self.static_private
    }

    pub(crate) fn proof(&self) -> &[u8; PROOF_LEN] {
        &self.proof
    }
}

impl fmt::Debug for ChannelKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelKeys")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The message an identity signs for a static key.
fn proof_message(static_public: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PROOF_DOMAIN.len().saturating_add(DH_LEN));
    message.extend_from_slice(PROOF_DOMAIN);
    message.extend_from_slice(static_public);
    message
}

/// The identity a proof payload vouches for, if it is a valid key and signature over
/// `static_public`.
pub(crate) fn verify_proof(payload: &[u8], static_public: &[u8]) -> Option<PublicKey> {
    if payload.len() != PROOF_LEN || static_public.len() != DH_LEN {
        return None;
    }
    let (key, signature) = payload.split_at(PUBLIC_KEY_LEN);
    let key = PublicKey::from_bytes(key).ok()?;
    key.verify(&proof_message(static_public), signature)
        .then_some(key)
}

/// A source of channel seeds: a ChaCha20 CSPRNG keyed with 32 secret bytes. A node keeps one and
/// draws a fresh seed for every channel, so one secret from the OS (or the simulation's seed)
/// keys every ephemeral key it will use. `Debug` never prints its state.
#[derive(Clone)]
pub struct SeedSource {
    rng: ChaCha20Rng,
}

impl SeedSource {
    /// A source keyed with `secret` (32 secret random bytes).
    pub fn new(secret: [u8; 32]) -> SeedSource {
        SeedSource {
            rng: ChaCha20Rng::from_seed(secret),
        }
    }

    /// The next 32-byte seed.
    pub fn next_seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }
}

impl fmt::Debug for SeedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedSource").finish_non_exhaustive()
    }
}
