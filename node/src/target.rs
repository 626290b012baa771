//! What [`Node::connect`](crate::Node::connect) connects to: a PNP name, a `p2pd1:` address or a
//! public key (66 hex digits).

use core::fmt;

use p2pd_signaling::pnp::Name;
use p2pd_signaling::{PeerAddress, PublicKey};

/// A connect target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A name registered on the PNP servers.
    Name(Name),
    /// A full address (`p2pd1:...`).
    Address(Box<PeerAddress>),
    /// A public key: the peer's fresh address is asked for over signaling.
    Key(PublicKey),
}

/// Why a target does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError(pub String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TargetError {}

impl Target {
    /// Parses `p2pd1:...` as an address, 66 hex digits as a compressed public key, anything else
    /// as a name.
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        if text.starts_with(p2pd_signaling::address::TEXT_PREFIX) {
            return PeerAddress::from_text(text)
                .map(|a| Target::Address(Box::new(a)))
                .map_err(|e| TargetError(format!("bad address: {e}")));
        }
        if text.len() == 66 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut bytes = [0u8; 33];
            for (i, byte) in bytes.iter_mut().enumerate() {
                let pair = text
                    .get(i.saturating_mul(2)..i.saturating_mul(2).saturating_add(2))
                    .ok_or_else(|| TargetError("bad key".into()))?;
                *byte = u8::from_str_radix(pair, 16).map_err(|_| TargetError("bad key".into()))?;
            }
            return PublicKey::from_bytes(&bytes)
                .map(Target::Key)
                .map_err(|_| TargetError("not a valid public key".into()));
        }
        Name::new(text)
            .map(Target::Name)
            .map_err(|e| TargetError(format!("bad name: {e}")))
    }

    /// The peer's key, when the target names it.
    pub fn key(&self) -> Option<PublicKey> {
        match self {
            Target::Name(_) => None,
            Target::Address(a) => Some(a.public_key),
            Target::Key(k) => Some(*k),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(n) => f.write_str(n.as_str()),
            Target::Address(a) => match a.to_text() {
                Ok(t) => f.write_str(&t),
                Err(_) => write!(f, "address of {}", a.public_key),
            },
            Target::Key(k) => write!(f, "{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_signaling::Identity;

    #[test]
    fn names_keys_and_addresses_parse() {
        let id = Identity::from_secret_bytes(&[3; 32]).unwrap();
        let key = id.public_key();
        assert_eq!(Target::parse(&key.to_string()).unwrap(), Target::Key(key));
        let addr = PeerAddress {
            public_key: key,
            interfaces: vec![],
            brokers: vec![],
        };
        let text = addr.to_text().unwrap();
        assert_eq!(
            Target::parse(&text).unwrap(),
            Target::Address(Box::new(addr))
        );
        assert!(matches!(Target::parse("alice").unwrap(), Target::Name(_)));
        assert!(Target::parse("p2pd1:!!").is_err());
        assert!(Target::parse("").is_err());
    }
}
