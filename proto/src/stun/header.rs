//! The 20-byte STUN header.

use core::fmt;

/// The RFC 5389 magic cookie.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header.
pub const HEADER_LEN: usize = 20;

/// A STUN method (12 bits).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Method(u16);

impl Method {
    /// Binding.
    pub const BINDING: Method = Method(0x001);

    /// A method from its 12-bit number, or `None` if it does not fit.
    pub const fn new(number: u16) -> Option<Method> {
        if number <= 0x0FFF {
            Some(Method(number))
        } else {
            None
        }
    }

    /// The method's number.
    pub const fn number(self) -> u16 {
        self.0
    }
}

/// A STUN message class.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request.
    Request,
    /// An indication.
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    /// Whether this is one of the two response classes.
    pub fn is_response(self) -> bool {
        matches!(self, Class::Success | Class::Error)
    }
}

/// The 96-bit transaction id that follows the cookie.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId([u8; 12]);

impl TransactionId {
    /// A transaction id from its bytes.
    pub const fn new(bytes: [u8; 12]) -> Self {
        TransactionId(bytes)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A decoded (or to-be-encoded) STUN header, without the length.
///
/// `cookie` holds the four bytes after the length: the magic cookie for RFC 5389 messages, the first
/// quarter of the 128-bit transaction id for RFC 3489 ("legacy") messages.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The class.
    pub class: Class,
    /// The method.
    pub method: Method,
    /// The cookie field.
    pub cookie: [u8; 4],
    /// The transaction id.
    pub transaction_id: TransactionId,
}

impl Header {
    /// An RFC 5389 header (magic cookie).
    pub const fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        Header {
            class,
            method,
            cookie: MAGIC_COOKIE.to_be_bytes(),
            transaction_id,
        }
    }

    /// An RFC 3489 header: `cookie` is any four bytes other than the magic cookie.
    pub const fn legacy(
        class: Class,
        method: Method,
        cookie: [u8; 4],
        transaction_id: TransactionId,
    ) -> Self {
        Header {
            class,
            method,
            cookie,
            transaction_id,
        }
    }

    /// Whether this is an RFC 3489 message (no magic cookie).
    pub fn is_legacy(&self) -> bool {
        u32::from_be_bytes(self.cookie) != MAGIC_COOKIE
    }

    /// The 16-bit message type field.
    pub(crate) fn message_type(&self) -> u16 {
        let m = self.method.0;
        let c: u16 = match self.class {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        };
        (m & 0x000F) | ((c & 1) << 4) | ((m & 0x0070) << 1) | ((c & 2) << 7) | ((m & 0x0F80) << 2)
    }

    /// Splits a message type field into class and method (the top two bits must be zero).
    pub(crate) fn split_type(t: u16) -> (Class, Method) {
        let c = ((t >> 4) & 1) | ((t >> 7) & 2);
        let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
        let class = match c {
            0 => Class::Request,
            1 => Class::Indication,
            2 => Class::Success,
            _ => Class::Error,
        };
        (class, Method(m))
    }

    /// The 16 bytes XORed into addresses: cookie then transaction id.
    pub(crate) fn xor_key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        let (a, b) = k.split_at_mut(4);
        a.copy_from_slice(&self.cookie);
        b.copy_from_slice(&self.transaction_id.0);
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for m in [0u16, 1, 0x0F, 0x10, 0x7F, 0x80, 0xFFF] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let h = Header::new(class, Method::new(m).unwrap(), TransactionId::new([0; 12]));
                let t = h.message_type();
                assert_eq!(t & 0xC000, 0);
                assert_eq!(Header::split_type(t), (class, Method::new(m).unwrap()));
            }
        }
        let h = Header::new(Class::Success, Method::BINDING, TransactionId::new([0; 12]));
        assert_eq!(h.message_type(), 0x0101);
        let h = Header::new(Class::Error, Method::BINDING, TransactionId::new([0; 12]));
        assert_eq!(h.message_type(), 0x0111);
    }
}
