//! What travels inside a rendezvous envelope: one kind byte, then the kind's content.
//!
//! ```text
//! kind  content
//! 0     message: the application payload (no receipt wanted)
//! 1     message: the application payload; the recipient answers with a receipt
//! 2     receipt: the 16-byte nonce of the envelope it answers (exactly 17 bytes in all)
//! ```
//!
//! The kind is inside the signed, encrypted envelope, so only the sender decides it; a receipt
//! is never answered (no receipt loops).

use core::fmt;

use crate::envelope::{MAX_PAYLOAD, NONCE_LEN};

/// Kind byte: a message, no receipt wanted.
const KIND_MESSAGE: u8 = 0;
/// Kind byte: a message whose recipient answers with a receipt.
const KIND_MESSAGE_WANTS_RECEIPT: u8 = 1;
/// Kind byte: a receipt.
const KIND_RECEIPT: u8 = 2;

/// The largest application payload one rendezvous message carries (the envelope's limit less
/// the kind byte).
pub const MAX_MESSAGE: usize = MAX_PAYLOAD - 1;

/// The decoded content of an opened envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content<'a> {
    /// An application message.
    Message {
        /// The application payload.
        payload: &'a [u8],
        /// The sender asks for a receipt.
        wants_receipt: bool,
    },
    /// A receipt for the envelope with this nonce.
    Receipt {
        /// The nonce of the envelope it answers.
        nonce: [u8; NONCE_LEN],
    },
}

/// Why an opened envelope's content was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContentError {
    /// No kind byte.
    Empty,
    /// A kind byte this version does not know.
    UnknownKind(u8),
    /// A receipt that is not exactly the kind byte and a nonce.
    MalformedReceipt,
}

impl fmt::Display for ContentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentError::Empty => f.write_str("empty envelope content"),
            ContentError::UnknownKind(kind) => write!(f, "unknown content kind {kind}"),
            ContentError::MalformedReceipt => f.write_str("malformed receipt"),
        }
    }
}

impl std::error::Error for ContentError {}

/// The bytes to seal for a message carrying `payload` (what [`Rendezvous::send`] and
/// [`Rendezvous::send_with_receipt`] seal).
///
/// [`Rendezvous::send`]: super::Rendezvous::send
/// [`Rendezvous::send_with_receipt`]: super::Rendezvous::send_with_receipt
pub fn message(payload: &[u8], wants_receipt: bool) -> Vec<u8> {
    let kind = if wants_receipt {
        KIND_MESSAGE_WANTS_RECEIPT
    } else {
        KIND_MESSAGE
    };
    let mut out = Vec::with_capacity(payload.len().saturating_add(1));
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// The bytes to seal for a receipt of the envelope whose nonce is `nonce`.
pub fn receipt(nonce: &[u8; NONCE_LEN]) -> [u8; 1 + NONCE_LEN] {
    let mut out = [KIND_RECEIPT; 1 + NONCE_LEN];
    if let Some(rest) = out.get_mut(1..) {
        rest.copy_from_slice(nonce);
    }
    out
}

/// Reads an opened envelope's plaintext (what [`message`] or [`receipt`] wrote).
pub fn parse(plaintext: &[u8]) -> Result<Content<'_>, ContentError> {
    let Some((&kind, rest)) = plaintext.split_first() else {
        return Err(ContentError::Empty);
    };
    match kind {
        KIND_MESSAGE | KIND_MESSAGE_WANTS_RECEIPT => Ok(Content::Message {
            payload: rest,
            wants_receipt: kind == KIND_MESSAGE_WANTS_RECEIPT,
        }),
        KIND_RECEIPT => {
            let nonce =
                <[u8; NONCE_LEN]>::try_from(rest).map_err(|_| ContentError::MalformedReceipt)?;
            Ok(Content::Receipt { nonce })
        }
        other => Err(ContentError::UnknownKind(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_bad_content_is_typed() {
        assert_eq!(
            parse(&message(b"hi", false)),
            Ok(Content::Message {
                payload: b"hi",
                wants_receipt: false
            })
        );
        assert_eq!(
            parse(&message(b"", true)),
            Ok(Content::Message {
                payload: b"",
                wants_receipt: true
            })
        );
        let nonce = [7; NONCE_LEN];
        assert_eq!(parse(&receipt(&nonce)), Ok(Content::Receipt { nonce }));
        assert_eq!(parse(&[]), Err(ContentError::Empty));
        assert_eq!(parse(&[3, 1]), Err(ContentError::UnknownKind(3)));
        assert_eq!(parse(&[2; 16]), Err(ContentError::MalformedReceipt));
        assert_eq!(parse(&[2; 18]), Err(ContentError::MalformedReceipt));
    }
}
