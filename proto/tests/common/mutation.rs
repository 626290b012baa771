//! Byte-level mutations of encoded messages, shared by the property tests.

use p2pd_proto::stun::HEADER_LEN;
use proptest::prelude::*;

/// One change to a message's bytes.
#[derive(Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
}

impl core::fmt::Debug for Mutation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Mutation::Flip(i, b) => write!(f, "Flip({i}, {b})"),
            Mutation::Set(i, b) => write!(f, "Set({i}, {b:#04x})"),
            Mutation::Truncate(n) => write!(f, "Truncate({n})"),
            Mutation::Append(v) => write!(f, "Append({v:02x?})"),
        }
    }
}

/// Mostly bit flips, some byte sets, truncations and appends.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Mutation::Append),
    ]
}

/// Applies `mutations`; with `fix_length` the header's length is set to match the new body, so the
/// mutated message reaches the attribute parsers.
pub fn mutate(mut m: Vec<u8>, mutations: &[Mutation], fix_length: bool) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip(i, bit) if !m.is_empty() => {
                let i = i % m.len();
                m[i] ^= 1 << bit;
            }
            Mutation::Set(i, b) if !m.is_empty() => {
                let i = i % m.len();
                m[i] = *b;
            }
            Mutation::Truncate(n) => m.truncate(n % (m.len() + 1)),
            Mutation::Append(v) => m.extend_from_slice(v),
            _ => {}
        }
    }
    if fix_length && m.len() >= HEADER_LEN {
        let body = u16::try_from(m.len() - HEADER_LEN).unwrap_or(u16::MAX);
        m[2..4].copy_from_slice(&body.to_be_bytes());
    }
    m
}
