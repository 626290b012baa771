//! ECIES over secp256k1 in eciespy's default layout (eciespy 0.4 / ecies-rs 0.2 defaults):
//!
//! ```text
//! eph_pk (65, uncompressed SEC1) ‖ nonce (16) ‖ tag (16) ‖ AES-256-GCM(ct)
//! key = HKDF-SHA256(salt = none, info = "", ikm = eph_pk(65) ‖ shared_point(65, uncompressed))
//! ```
//!
//! Implemented here with k256 + hkdf + aes-gcm instead of the `ecies` crate because `ecies::encrypt`
//! draws its ephemeral key and nonce from the OS RNG itself (protocol crates get no global RNG and
//! must be deterministic) and its configuration is process-global. The ephemeral key and the GCM
//! nonce are derived by the caller ([`encrypt`] takes them), so the output is a pure function of the
//! inputs. The `ecies` crate is a dev-dependency and checks interop both ways in the tests.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::AesGcm;
use hkdf::Hkdf;
use k256::elliptic_curve::sec1::ToSec1Point;
use k256::{NonZeroScalar, ProjectivePoint};
use sha2::Sha256;

use crate::identity::PublicKey;

type Cipher = AesGcm<Aes256, U16>;

/// Uncompressed ephemeral public key length.
pub const EPH_PK_LEN: usize = 65;
/// GCM nonce length (eciespy default).
pub const NONCE_LEN: usize = 16;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes ECIES adds to a plaintext.
pub const OVERHEAD: usize = EPH_PK_LEN + NONCE_LEN + TAG_LEN;

fn uncompressed(point: &ProjectivePoint) -> Option<[u8; 65]> {
    let sec1 = point.to_affine().to_sec1_point(false);
    let bytes = sec1.as_bytes();
    let mut out = [0u8; 65];
    if bytes.len() != out.len() {
        return None; // identity point
    }
    out.copy_from_slice(bytes);
    Some(out)
}

/// Scalar multiplication: group arithmetic modulo the curve order, which cannot overflow.
#[allow(clippy::arithmetic_side_effects)]
fn mul(point: &ProjectivePoint, scalar: &NonZeroScalar) -> ProjectivePoint {
    *point * **scalar
}

fn derive_key(eph_pk: &[u8; 65], shared: &[u8; 65]) -> [u8; 32] {
    let mut ikm = [0u8; 130];
    let (a, b) = ikm.split_at_mut(65);
    a.copy_from_slice(eph_pk);
    b.copy_from_slice(shared);
    let mut key = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit, so expand cannot fail.
    let _ = Hkdf::<Sha256>::new(None, &ikm).expand(&[], &mut key);
    key
}

/// Encrypts `plaintext` to `recipient` with ephemeral secret `eph` and GCM nonce `nonce`, appending
/// the ECIES ciphertext to `out`. `eph` and `nonce` must never repeat for different plaintexts.
pub fn encrypt(
    out: &mut Vec<u8>,
    recipient: &PublicKey,
    eph: &NonZeroScalar,
    nonce: &[u8; NONCE_LEN],
    plaintext: &[u8],
) -> Option<()> {
    let eph_pk = uncompressed(&(mul(&ProjectivePoint::GENERATOR, eph)))?;
    let shared = uncompressed(&(mul(&recipient.k256().to_projective(), eph)))?;
    let key = derive_key(&eph_pk, &shared);
    let cipher = Cipher::new_from_slice(&key).ok()?;
    let base = out.len();
    out.extend_from_slice(&eph_pk);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&[0u8; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let body_start = base.checked_add(OVERHEAD)?;
    let tag = cipher
        .encrypt_inout_detached(&(*nonce).into(), &[], out.get_mut(body_start..)?.into())
        .ok()?;
    let tag_start = base.checked_add(EPH_PK_LEN + NONCE_LEN)?;
    out.get_mut(tag_start..body_start)?.copy_from_slice(&tag);
    Some(())
}

/// Decrypts an ECIES ciphertext with the recipient's secret key. `None` on any failure.
pub fn decrypt(secret: &k256::SecretKey, ciphertext: &[u8]) -> Option<Vec<u8>> {
    let eph_bytes = ciphertext.get(..EPH_PK_LEN)?;
    let nonce = ciphertext.get(EPH_PK_LEN..EPH_PK_LEN + NONCE_LEN)?;
    let tag = ciphertext.get(EPH_PK_LEN + NONCE_LEN..OVERHEAD)?;
    let body = ciphertext.get(OVERHEAD..)?;
    // eciespy's default writes the ephemeral key uncompressed; accept only that.
    if eph_bytes.first() != Some(&4) {
        return None;
    }
    let eph = k256::PublicKey::from_sec1_bytes(eph_bytes).ok()?;
    let mut eph_pk = [0u8; 65];
    eph_pk.copy_from_slice(eph_bytes);
    let shared = uncompressed(&(mul(&eph.to_projective(), &secret.to_nonzero_scalar())))?;
    let key = derive_key(&eph_pk, &shared);
    let cipher = Cipher::new_from_slice(&key).ok()?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut plain = body.to_vec();
    cipher
        .decrypt_inout_detached(&nonce.into(), &[], plain.as_mut_slice().into(), &tag.into())
        .ok()?;
    Some(plain)
}
