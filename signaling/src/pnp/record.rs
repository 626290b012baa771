//! Names and owner-signed records: validation, the record encoding and its signature.

use core::fmt;

use crate::identity::{Identity, PublicKey, PUBLIC_KEY_LEN, SIGNATURE_LEN};

use super::wire::{Reader, WireError};

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE_LEN: usize = 640;
/// Bytes a record's encoding adds to its name and value.
pub const RECORD_FIXED_LEN: usize = 1 + 2 + PUBLIC_KEY_LEN + 8 + 8 + SIGNATURE_LEN;
/// Longest record encoding.
pub const MAX_RECORD_LEN: usize = RECORD_FIXED_LEN + MAX_NAME_LEN + MAX_VALUE_LEN;
/// The domain-separation prefix of the bytes a record signature covers. It cannot be confused
/// with an envelope's signed bytes, which start with the envelope version byte `0x01`.
pub const RECORD_SIGNING_DOMAIN: &[u8] = b"p2pd-pnp/v1/record";

/// Why a name is invalid.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// Longer than [`MAX_NAME_LEN`] bytes.
    TooLong,
    /// A byte outside `a-z 0-9 - _ .`, or a name not starting with a letter or digit.
    InvalidCharacter(u8),
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => f.write_str("empty name"),
            NameError::TooLong => write!(f, "name longer than {MAX_NAME_LEN} bytes"),
            NameError::InvalidCharacter(b) => write!(f, "invalid name byte 0x{b:02x}"),
        }
    }
}

impl std::error::Error for NameError {}

/// A registry name: 1 to [`MAX_NAME_LEN`] bytes of lowercase ASCII letters, digits, `-`, `_` and
/// `.`, starting with a letter or digit. Names are never normalised: `"Alice"` is rejected, not
/// lowercased, so every name has exactly one spelling on the wire.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Name, NameError> {
        Self::from_bytes(name.as_bytes())
    }

    /// Validates raw bytes (as found on the wire).
    pub fn from_bytes(bytes: &[u8]) -> Result<Name, NameError> {
        let Some(&first) = bytes.first() else {
            return Err(NameError::Empty);
        };
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::InvalidCharacter(first));
        }
        if let Some(&bad) = bytes.iter().find(|b| !Self::allowed(**b)) {
            return Err(NameError::InvalidCharacter(bad));
        }
        let text = core::str::from_utf8(bytes).map_err(|_| NameError::InvalidCharacter(first))?;
        Ok(Name(text.to_owned()))
    }

    fn allowed(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The length in bytes (1 to [`MAX_NAME_LEN`]).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: names are never empty. (For clippy's `len_without_is_empty`.)
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        // Validated: at most MAX_NAME_LEN (64) bytes, so the length fits a byte.
        out.push(u8::try_from(self.0.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.0.as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Name, WireError> {
        let len = usize::from(r.u8()?);
        let bytes = r.take(len)?;
        Name::from_bytes(bytes).map_err(WireError::Name)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.0)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why [`Record::sign`] refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordError {
    /// The value is longer than [`MAX_VALUE_LEN`] bytes.
    ValueTooLarge,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::ValueTooLarge => write!(f, "value longer than {MAX_VALUE_LEN} bytes"),
        }
    }
}

impl std::error::Error for RecordError {}

/// A name's value, signed by its owner.
///
/// The signature covers [`RECORD_SIGNING_DOMAIN`] followed by the record's encoding without the
/// signature (name, value, owner key, version, expiry), so anyone holding the record can check it
/// without trusting the server that returned it: [`Record::verify`].
///
/// Encoding (big-endian):
///
/// ```text
/// name_len:u8 name:[name_len] value_len:u16 value:[value_len] owner:[33] version:u64
/// expires_ms:u64 signature:[64]
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    name: Name,
    value: Vec<u8>,
    owner: PublicKey,
    version: u64,
    expires_ms: u64,
    signature: [u8; SIGNATURE_LEN],
}

impl Record {
    /// A record for `name` owned and signed by `owner`. `expires_ms` is the Unix time (ms) after
    /// which the record is no longer valid; `version` orders updates of the same name.
    pub fn sign(
        owner: &Identity,
        name: Name,
        value: Vec<u8>,
        version: u64,
        expires_ms: u64,
    ) -> Result<Record, RecordError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(RecordError::ValueTooLarge);
        }
        let mut record = Record {
            name,
            value,
            owner: owner.public_key(),
            version,
            expires_ms,
            signature: [0; SIGNATURE_LEN],
        };
        record.signature = owner.sign(&record.signed_bytes());
        Ok(record)
    }

    /// Whether the signature is the owner's over this record's contents.
    pub fn verify(&self) -> bool {
        self.owner.verify(&self.signed_bytes(), &self.signature)
    }

    /// The name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The value (at most [`MAX_VALUE_LEN`] bytes).
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The owner's public key.
    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// The version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Unix time in milliseconds at which the record expires.
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// Whether the record has expired at Unix time `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms <= now_ms
    }

    /// The signature (`r ‖ s`).
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }

    /// The encoding (see the type docs), for example for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Parses exactly one record encoding. The signature is **not** checked: call
    /// [`Record::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Record, WireError> {
        let mut r = Reader::new(bytes);
        let record = Self::decode(&mut r)?;
        r.finish()?;
        Ok(record)
    }

    /// The length of the encoding.
    pub fn encoded_len(&self) -> usize {
        RECORD_FIXED_LEN
            .saturating_add(self.name.len())
            .saturating_add(self.value.len())
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(RECORD_SIGNING_DOMAIN.len().saturating_add(MAX_RECORD_LEN));
        out.extend_from_slice(RECORD_SIGNING_DOMAIN);
        self.encode_unsigned(&mut out);
        out
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        self.name.encode(out);
        // Checked at construction and decode: at most MAX_VALUE_LEN (640) bytes.
        let value_len = u16::try_from(self.value.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&value_len.to_be_bytes());
        out.extend_from_slice(&self.value);
        out.extend_from_slice(&self.owner.to_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.expires_ms.to_be_bytes());
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        self.encode_unsigned(out);
        out.extend_from_slice(&self.signature);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Record, WireError> {
        let name = Name::decode(r)?;
        let value_len = usize::from(r.u16()?);
        if value_len > MAX_VALUE_LEN {
            return Err(WireError::ValueTooLarge);
        }
        let value = r.take(value_len)?.to_vec();
        let owner =
            PublicKey::from_bytes(r.take(PUBLIC_KEY_LEN)?).map_err(|_| WireError::BadKey)?;
        let version = r.u64()?;
        let expires_ms = r.u64()?;
        let signature = r.array::<SIGNATURE_LEN>()?;
        Ok(Record {
            name,
            value,
            owner,
            version,
            expires_ms,
            signature,
        })
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("name", &self.name)
            .field("value_len", &self.value.len())
            .field("owner", &self.owner)
            .field("version", &self.version)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}
