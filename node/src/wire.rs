//! The node's own bytes on the wire: its signaling messages (first byte [`TAG`]) and the preface
//! that opens every TCP connection between nodes.
//!
//! ```text
//! message  = TAG:u8 kind:u8 body
//!   kind 1  address request   nonce:u64
//!   kind 2  address reply     nonce:u64 address:[rest]      ; PeerAddress binary form
//!   kind 3  reverse request   token:[16] address:[rest]     ; dial me back at this address
//!   kind 4  reverse failed    token:[16]                    ; no dial reached the requester
//!   kind 5  relay offer       token:[16] relayed:addr       ; dial me through this relay
//!   kind 6  relay failed      token:[16]                    ; the relayed address was not reached
//! addr     = 4:u8 ip:[4] port:u16 | 6:u8 ip:[16] port:u16  ; p2pd_signaling::address::write_socket_addr
//! preface  = MAGIC:[6] kind:u8 token:[16]                   ; kind 1 direct, 2 reverse, 3 relay
//! ```
//!
//! After the preface the connection carries the secure channel. On a direct connection the
//! dialler is the channel's initiator; on a reverse one the dialler (the peer that was asked to
//! dial) is the responder and the requester initiates, so on every path the side that called
//! `connect` chooses the winning connection (its last handshake message goes on that one only).
//! A relayed connection is like a reverse one: the offer's receiver dials the relayed address
//! and is the responder; the connecting side, whose relay hands it the connection, initiates.
//! The token is in the channel's context: a handshake cannot be moved to another connection.

use core::net::SocketAddr;

use p2pd_signaling::address::{read_socket_addr, write_socket_addr};
use p2pd_signaling::PeerAddress;

/// First byte of a node message over signaling (the punch's messages start with
/// [`p2pd_punch::message::TAG`]).
pub const TAG: u8 = 0x4E;

/// The preface's magic bytes.
pub const MAGIC: [u8; 6] = *b"p2pdN1";
/// A preface's length.
pub const PREFACE_LEN: usize = MAGIC.len() + 1 + TOKEN_LEN;
/// A reverse request's token length.
pub const TOKEN_LEN: usize = 16;

/// A node message over signaling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Send me your current address.
    AddressRequest {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// My current address.
    AddressReply {
        /// The request's nonce.
        nonce: u64,
        /// The address.
        address: Box<PeerAddress>,
    },
    /// Dial me at `address`, open with a reverse preface carrying `token`.
    ReverseRequest {
        /// The requester's token.
        token: [u8; TOKEN_LEN],
        /// The requester's address.
        address: Box<PeerAddress>,
    },
    /// No dial reached the requester.
    ReverseFailed {
        /// The request's token.
        token: [u8; TOKEN_LEN],
    },
    /// Dial me through my relay at `relayed`, open with a relay preface carrying `token`.
    RelayOffer {
        /// The offerer's token.
        token: [u8; TOKEN_LEN],
        /// The relayed address of the offerer's allocation.
        relayed: SocketAddr,
    },
    /// The relayed address could not be reached.
    RelayFailed {
        /// The offer's token.
        token: [u8; TOKEN_LEN],
    },
}

impl Message {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![TAG];
        match self {
            Message::AddressRequest { nonce } => {
                out.push(1);
                out.extend_from_slice(&nonce.to_be_bytes());
            }
            Message::AddressReply { nonce, address } => {
                out.push(2);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&address.to_bytes().unwrap_or_default());
            }
            Message::ReverseRequest { token, address } => {
                out.push(3);
                out.extend_from_slice(token);
                out.extend_from_slice(&address.to_bytes().unwrap_or_default());
            }
            Message::ReverseFailed { token } => {
                out.push(4);
                out.extend_from_slice(token);
            }
            Message::RelayOffer { token, relayed } => {
                out.push(5);
                out.extend_from_slice(token);
                write_socket_addr(&mut out, *relayed);
            }
            Message::RelayFailed { token } => {
                out.push(6);
                out.extend_from_slice(token);
            }
        }
        out
    }

    /// Parses a message; `None` for anything malformed (not ours, unknown kind, bad address).
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != TAG {
            return None;
        }
        let (&kind, body) = rest.split_first()?;
        match kind {
            1 => Some(Message::AddressRequest {
                nonce: u64::from_be_bytes(body.try_into().ok()?),
            }),
            2 => {
                let (nonce, address) = body.split_first_chunk::<8>()?;
                Some(Message::AddressReply {
                    nonce: u64::from_be_bytes(*nonce),
                    address: Box::new(PeerAddress::from_bytes(address).ok()?),
                })
            }
            3 => {
                let (token, address) = body.split_first_chunk::<TOKEN_LEN>()?;
                Some(Message::ReverseRequest {
                    token: *token,
                    address: Box::new(PeerAddress::from_bytes(address).ok()?),
                })
            }
            4 => Some(Message::ReverseFailed {
                token: body.try_into().ok()?,
            }),
            5 => {
                let (token, addr) = body.split_first_chunk::<TOKEN_LEN>()?;
                match read_socket_addr(addr)? {
                    (relayed, []) => Some(Message::RelayOffer {
                        token: *token,
                        relayed,
                    }),
                    _ => None,
                }
            }
            6 => Some(Message::RelayFailed {
                token: body.try_into().ok()?,
            }),
            _ => None,
        }
    }
}

/// What a connection is for, from its preface.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PrefaceKind {
    /// The dialler connects to us and initiates the channel.
    Direct,
    /// We asked the dialler to dial us: we initiate the channel.
    Reverse,
    /// We offered the dialler our relayed address: it came through the relay, and we initiate
    /// the channel.
    Relay,
}

/// A connection's preface.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Preface {
    /// Direct or reverse.
    pub kind: PrefaceKind,
    /// The token (random for direct; the request's for reverse).
    pub token: [u8; TOKEN_LEN],
}

impl Preface {
    /// The wire form.
    pub fn encode(&self) -> [u8; PREFACE_LEN] {
        let mut out = [0u8; PREFACE_LEN];
        let (magic, rest) = out.split_at_mut(MAGIC.len());
        magic.copy_from_slice(&MAGIC);
        if let Some((kind, token)) = rest.split_first_mut() {
            *kind = match self.kind {
                PrefaceKind::Direct => 1,
                PrefaceKind::Reverse => 2,
                PrefaceKind::Relay => 3,
            };
            token.copy_from_slice(&self.token);
        }
        out
    }

    /// Parses a complete preface; `None` if it is not one.
    pub fn decode(bytes: &[u8; PREFACE_LEN]) -> Option<Preface> {
        let (magic, rest) = bytes.split_first_chunk::<6>()?;
        if *magic != MAGIC {
            return None;
        }
        let (&kind, token) = rest.split_first()?;
        let kind = match kind {
            1 => PrefaceKind::Direct,
            2 => PrefaceKind::Reverse,
            3 => PrefaceKind::Relay,
            _ => return None,
        };
        Some(Preface {
            kind,
            token: token.try_into().ok()?,
        })
    }

    /// The secure channel's context for a connection opened with this preface.
    pub fn context(&self) -> Vec<u8> {
        let mut c = b"p2pd-node".to_vec();
        c.extend_from_slice(&self.encode());
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pd_signaling::Identity;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let key = Identity::from_secret_bytes(&[5; 32]).unwrap().public_key();
        let address = Box::new(PeerAddress {
            public_key: key,
            interfaces: vec![],
            brokers: vec![],
        });
        for m in [
            Message::AddressRequest { nonce: 7 },
            Message::AddressReply {
                nonce: 9,
                address: address.clone(),
            },
            Message::ReverseRequest {
                token: [4; 16],
                address,
            },
            Message::ReverseFailed { token: [1; 16] },
            Message::RelayOffer {
                token: [2; 16],
                relayed: "192.0.2.7:49152".parse().unwrap(),
            },
            Message::RelayOffer {
                token: [3; 16],
                relayed: "[2001:db8::1]:3478".parse().unwrap(),
            },
            Message::RelayFailed { token: [5; 16] },
        ] {
            let bytes = m.encode();
            assert_eq!(Message::decode(&bytes), Some(m));
            for cut in 0..bytes.len() {
                assert_eq!(Message::decode(bytes.get(..cut).unwrap()), None);
            }
        }
        assert_eq!(Message::decode(&[TAG, 9, 0]), None);
        // An address of an unknown family, or with bytes after it.
        let mut offer = vec![TAG, 5];
        offer.extend_from_slice(&[0; TOKEN_LEN]);
        offer.extend_from_slice(&[5, 1, 2, 3, 4, 0, 80]);
        assert_eq!(Message::decode(&offer), None);
        let mut long = Message::RelayOffer {
            token: [0; 16],
            relayed: "192.0.2.7:80".parse().unwrap(),
        }
        .encode();
        long.push(0);
        assert_eq!(Message::decode(&long), None);
    }

    #[test]
    fn prefaces_round_trip() {
        for kind in [
            PrefaceKind::Direct,
            PrefaceKind::Reverse,
            PrefaceKind::Relay,
        ] {
            let p = Preface {
                kind,
                token: [7; 16],
            };
            assert_eq!(Preface::decode(&p.encode()), Some(p));
        }
        assert_eq!(Preface::decode(&[0; PREFACE_LEN]), None);
    }
}
