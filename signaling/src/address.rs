//! The peer address format (v1): who a peer is, where it can be reached, what NAT it sits behind
//! and which signaling brokers it listens on.
//!
//! Unlike p2pd's `-`-separated text address, this format names brokers by canonical [`BrokerId`]
//! (never by an offset into a local list), carries the public key (the node id is checked against
//! it), has hard caps, and has exactly one encoding per value: the parser rejects anything the
//! encoder would not have produced.
//!
//! # Binary form
//!
//! All integers are big-endian. `count` bytes are section length prefixes (number of entries).
//!
//! ```text
//! address   = version:u8 (= 1)
//!             node_id:[20]          ; must equal NodeId::from_public_key(public_key)
//!             public_key:[33]       ; compressed SEC1 (02|03 ‖ X), a valid curve point
//!             count:u8 interface*   ; at most MAX_INTERFACES
//!             count:u8 broker:u64*  ; at most MAX_BROKERS, no duplicates
//! interface = flags:u8              ; bits 0-1 label kind, bit 2 NAT known, bits 3-7 reserved (0)
//!             label                 ; kind 0: nothing; 1: index:u32; 2: len:u8 name:[len]; 3: reserved
//!             nat?                  ; present iff flag bit 2
//!             count:u8 endpoint*    ; at most MAX_ENDPOINTS per interface, no duplicates
//! nat       = mapping:u8 (0 EI, 1 AD, 2 APD) filtering:u8 (same) allocation
//! allocation= 0 (preserving) | 1 offset:i32 (fixed offset) | 2 stride:u16 (sequential, non-zero)
//!           | 3 stride:u16 (local-port dependent) | 4 (random)
//! endpoint  = 4 ip:[4] port:u16 | 6 ip:[16] port:u16   ; port non-zero
//! ```
//!
//! Names are 1..=[`MAX_NAME_LEN`] bytes of UTF-8 without control characters. Labelled interfaces
//! (by index or name) must be distinct. The whole encoding is at most [`MAX_ADDRESS_LEN`] bytes.
//! Order is significant (preference order) and preserved; duplicates are rejected.
//!
//! # Text form
//!
//! `p2pd1:` followed by the binary form in unpadded base64url (RFC 4648 §5). The decoder is strict:
//! no padding, no whitespace, unused trailing bits must be zero, so the text form is canonical too
//! and parses to exactly the value the binary form does.
//!
//! ```
//! use p2pd_signaling::{BrokerId, Endpoint, Identity, Interface, InterfaceLabel, PeerAddress};
//! let id = Identity::from_secret_bytes(&[1; 32]).unwrap();
//! let addr = PeerAddress {
//!     public_key: id.public_key(),
//!     interfaces: vec![Interface {
//!         label: InterfaceLabel::Name("eth0".into()),
//!         nat: None,
//!         endpoints: vec![Endpoint::new("192.0.2.1".parse().unwrap(), 4000)],
//!     }],
//!     brokers: vec![BrokerId::from_u64(7)],
//! };
//! let text = addr.to_text().unwrap();
//! assert!(text.starts_with("p2pd1:"));
//! assert_eq!(PeerAddress::from_text(&text).unwrap(), addr);
//! assert_eq!(PeerAddress::from_bytes(&addr.to_bytes().unwrap()).unwrap(), addr);
//! ```

mod base64url;

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};

use crate::identity::{NodeId, PublicKey, NODE_ID_LEN, PUBLIC_KEY_LEN};

use base64url::{base64url_decode, base64url_encode};

/// The format version this module reads and writes.
pub const ADDRESS_VERSION: u8 = 1;
/// Most interfaces in one address.
pub const MAX_INTERFACES: usize = 8;
/// Most endpoints per interface.
pub const MAX_ENDPOINTS: usize = 8;
/// Most brokers in one address.
pub const MAX_BROKERS: usize = 8;
/// Longest interface name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Largest binary encoding, in bytes.
pub const MAX_ADDRESS_LEN: usize = 1024;
/// The text form's prefix.
pub const TEXT_PREFIX: &str = "p2pd1:";
/// Longest text form: the prefix plus unpadded base64 of [`MAX_ADDRESS_LEN`] bytes.
pub const MAX_TEXT_LEN: usize = TEXT_PREFIX.len() + (MAX_ADDRESS_LEN * 4).div_ceil(3);

const FLAG_LABEL_MASK: u8 = 0b011;
const FLAG_NAT: u8 = 0b100;
const FLAG_RESERVED: u8 = !0b111;

/// A signaling broker's canonical id (a hash of its address and key, computed by the broker list),
/// never its position in a list. Displayed as 16 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BrokerId(u64);

impl BrokerId {
    /// The canonical id of the MQTT broker named `host` (if known) at `address`: FNV-1a of
    /// `"mqtt:" + host + ":" + port`, or of `"mqtt:" + address` when no name is known (see
    /// [`p2pd_nat::canonical_id`]).
    ///
    /// ```
    /// use p2pd_signaling::BrokerId;
    /// let a = BrokerId::of(Some("Broker.Example.org."), "192.0.2.7:1883".parse().unwrap());
    /// let b = BrokerId::of(Some("broker.example.org"), "198.51.100.1:1883".parse().unwrap());
    /// assert_eq!(a, b); // named brokers keep their id when they move
    /// ```
    pub fn of(host: Option<&str>, address: SocketAddr) -> BrokerId {
        BrokerId(p2pd_nat::canonical_id("mqtt", host, address))
    }

    /// An id from a number.
    pub const fn from_u64(v: u64) -> BrokerId {
        BrokerId(v)
    }

    /// The id as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An IP address and a (non-zero) port. Unlike [`SocketAddr`] it has no IPv6 flow info or scope
/// id, which the format does not carry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Endpoint {
    /// The address.
    pub ip: IpAddr,
    /// The port (0 is rejected).
    pub port: u16,
}

impl Endpoint {
    /// An endpoint.
    pub const fn new(ip: IpAddr, port: u16) -> Self {
        Endpoint { ip, port }
    }
}

impl From<Endpoint> for SocketAddr {
    fn from(e: Endpoint) -> SocketAddr {
        SocketAddr::new(e.ip, e.port)
    }
}

impl From<SocketAddr> for Endpoint {
    /// Drops IPv6 flow info and scope id.
    fn from(s: SocketAddr) -> Endpoint {
        Endpoint::new(s.ip(), s.port())
    }
}

/// How the peer names an interface.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum InterfaceLabel {
    /// Not named.
    Unnamed,
    /// The OS interface index.
    Index(u32),
    /// The interface name (1..=[`MAX_NAME_LEN`] bytes, no control characters).
    Name(String),
}

/// The NAT behaviour of an interface, as far as the peer needs it for punching.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NatInfo {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port allocation (a `Sequential` stride must be non-zero).
    pub allocation: PortAllocation,
}

impl From<&Behaviour> for NatInfo {
    fn from(b: &Behaviour) -> NatInfo {
        NatInfo {
            mapping: b.mapping,
            filtering: b.filtering,
            allocation: b.allocation,
        }
    }
}

/// One of the peer's interfaces.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Interface {
    /// Its label.
    pub label: InterfaceLabel,
    /// Its NAT behaviour, `None` if unknown.
    pub nat: Option<NatInfo>,
    /// Where it can be reached (external and local addresses), in preference order.
    pub endpoints: Vec<Endpoint>,
}

/// A peer's address. The node id is not stored: it is always [`PeerAddress::node_id`], derived
/// from the key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerAddress {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Its interfaces.
    pub interfaces: Vec<Interface>,
    /// The brokers it listens on, in preference order.
    pub brokers: Vec<BrokerId>,
}

/// Which part of an address an error is about.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Part {
    /// An interface.
    Interface,
    /// An endpoint of an interface.
    Endpoint,
    /// A broker.
    Broker,
}

/// Why an address was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AddressError {
    /// The input ends early.
    Truncated,
    /// Bytes follow a complete address.
    TrailingBytes,
    /// The version byte is not [`ADDRESS_VERSION`].
    UnsupportedVersion(u8),
    /// A section has more entries than its cap.
    TooMany {
        /// Which section.
        what: Part,
    },
    /// The encoding is longer than [`MAX_ADDRESS_LEN`] (or the text than [`MAX_TEXT_LEN`]).
    TooLarge,
    /// The public key is not a valid compressed secp256k1 point.
    BadKey,
    /// The node id does not match the public key.
    NodeIdMismatch,
    /// An endpoint's family byte is neither 4 nor 6.
    BadFamily(u8),
    /// A port is 0.
    BadPort,
    /// An entry occurs twice.
    Duplicate {
        /// Which kind of entry.
        what: Part,
    },
    /// An interface name is empty, too long, not UTF-8 or has control characters.
    BadName,
    /// A NAT mapping, filtering or allocation code is unknown, or a sequential stride is 0.
    BadNat,
    /// Reserved flag bits (or the reserved label kind) are set.
    Reserved,
    /// The text form lacks the prefix or is not strict unpadded base64url.
    BadText,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Truncated => f.write_str("address truncated"),
            AddressError::TrailingBytes => f.write_str("trailing bytes after address"),
            AddressError::UnsupportedVersion(v) => write!(f, "unsupported address version {v}"),
            AddressError::TooMany { what } => write!(f, "too many {}", part_plural(*what)),
            AddressError::TooLarge => f.write_str("address too large"),
            AddressError::BadKey => f.write_str("invalid public key"),
            AddressError::NodeIdMismatch => f.write_str("node id does not match public key"),
            AddressError::BadFamily(b) => write!(f, "unknown address family {b}"),
            AddressError::BadPort => f.write_str("port 0"),
            AddressError::Duplicate { what } => write!(f, "duplicate {}", part_singular(*what)),
            AddressError::BadName => f.write_str("invalid interface name"),
            AddressError::BadNat => f.write_str("invalid NAT behaviour"),
            AddressError::Reserved => f.write_str("reserved bits set"),
            AddressError::BadText => f.write_str("invalid text address"),
        }
    }
}

impl std::error::Error for AddressError {}

fn part_plural(part: Part) -> &'static str {
    match part {
        Part::Interface => "interfaces",
        Part::Endpoint => "endpoints",
        Part::Broker => "brokers",
    }
}

fn part_singular(part: Part) -> &'static str {
    match part {
        Part::Interface => "interface",
        Part::Endpoint => "endpoint",
        Part::Broker => "broker",
    }
}

impl PeerAddress {
    /// The node id (derived from the key).
    pub fn node_id(&self) -> NodeId {
        self.public_key.node_id()
    }

    /// Checks caps, ports, names, NAT codes and duplicates (everything but the total size).
    pub fn validate(&self) -> Result<(), AddressError> {
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(AddressError::TooMany {
                what: Part::Interface,
            });
        }
        if self.brokers.len() > MAX_BROKERS {
            return Err(AddressError::TooMany { what: Part::Broker });
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            iface.validate()?;
            let earlier = self.interfaces.iter().take(i);
            if iface.label != InterfaceLabel::Unnamed
                && earlier.clone().any(|e| e.label == iface.label)
            {
                return Err(AddressError::Duplicate {
                    what: Part::Interface,
                });
            }
        }
        if has_duplicates(&self.brokers) {
            return Err(AddressError::Duplicate { what: Part::Broker });
        }
        Ok(())
    }

    /// The binary form. Fails if the value breaks a rule of the format.
    pub fn to_bytes(&self) -> Result<Vec<u8>, AddressError> {
        self.validate()?;
        let mut out = Vec::with_capacity(128);
        out.push(ADDRESS_VERSION);
        out.extend_from_slice(self.node_id().as_bytes());
        out.extend_from_slice(&self.public_key.to_bytes());
        out.push(count_byte(self.interfaces.len())?);
        for iface in &self.interfaces {
            iface.encode(&mut out)?;
        }
        out.push(count_byte(self.brokers.len())?);
        for b in &self.brokers {
            out.extend_from_slice(&b.0.to_be_bytes());
        }
        if out.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLarge);
        }
        Ok(out)
    }

    /// Parses the binary form strictly (see the [module docs](self)).
    pub fn from_bytes(bytes: &[u8]) -> Result<PeerAddress, AddressError> {
        if bytes.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::TooLarge);
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != ADDRESS_VERSION {
            return Err(AddressError::UnsupportedVersion(version));
        }
        let node_id = NodeId(r.array::<NODE_ID_LEN>()?);
        let key_bytes = r.array::<PUBLIC_KEY_LEN>()?;
        let public_key = PublicKey::from_bytes(&key_bytes).map_err(|_| AddressError::BadKey)?;
        if public_key.to_bytes() != key_bytes {
            return Err(AddressError::BadKey);
        }
        if public_key.node_id() != node_id {
            return Err(AddressError::NodeIdMismatch);
        }
        let n = r.count(MAX_INTERFACES, Part::Interface)?;
        let mut interfaces = Vec::with_capacity(n);
        for _ in 0..n {
            interfaces.push(Interface::decode(&mut r)?);
        }
        let n = r.count(MAX_BROKERS, Part::Broker)?;
        let mut brokers = Vec::with_capacity(n);
        for _ in 0..n {
            brokers.push(BrokerId(u64::from_be_bytes(r.array()?)));
        }
        if !r.0.is_empty() {
            return Err(AddressError::TrailingBytes);
        }
        let addr = PeerAddress {
            public_key,
            interfaces,
            brokers,
        };
        addr.validate()?;
        Ok(addr)
    }

    /// The text form: [`TEXT_PREFIX`] and unpadded base64url of the binary form.
    pub fn to_text(&self) -> Result<String, AddressError> {
        let bytes = self.to_bytes()?;
        let mut out = String::with_capacity(MAX_TEXT_LEN);
        out.push_str(TEXT_PREFIX);
        base64url_encode(&bytes, &mut out);
        Ok(out)
    }

    /// Parses the text form strictly; gives exactly what [`PeerAddress::from_bytes`] gives for the
    /// decoded bytes.
    pub fn from_text(text: &str) -> Result<PeerAddress, AddressError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(AddressError::TooLarge);
        }
        let body = text
            .strip_prefix(TEXT_PREFIX)
            .ok_or(AddressError::BadText)?;
        let bytes = base64url_decode(body).ok_or(AddressError::BadText)?;
        PeerAddress::from_bytes(&bytes)
    }
}

impl fmt::Display for PeerAddress {
    /// The text form, or `<invalid address>` if the value breaks a rule of the format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_text() {
            Ok(t) => f.write_str(&t),
            Err(_) => f.write_str("<invalid address>"),
        }
    }
}

impl core::str::FromStr for PeerAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, AddressError> {
        PeerAddress::from_text(s)
    }
}

impl Interface {
    fn validate(&self) -> Result<(), AddressError> {
        if let InterfaceLabel::Name(name) = &self.label {
            if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(AddressError::BadName);
            }
        }
        if let Some(nat) = &self.nat {
            if matches!(nat.allocation, PortAllocation::Sequential { stride: 0 }) {
                return Err(AddressError::BadNat);
            }
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(AddressError::TooMany {
                what: Part::Endpoint,
            });
        }
        if self.endpoints.iter().any(|e| e.port == 0) {
            return Err(AddressError::BadPort);
        }
        if has_duplicates(&self.endpoints) {
            return Err(AddressError::Duplicate {
                what: Part::Endpoint,
            });
        }
        Ok(())
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), AddressError> {
        let kind: u8 = match self.label {
            InterfaceLabel::Unnamed => 0,
            InterfaceLabel::Index(_) => 1,
            InterfaceLabel::Name(_) => 2,
        };
        let flags = kind | if self.nat.is_some() { FLAG_NAT } else { 0 };
        out.push(flags);
        match &self.label {
            InterfaceLabel::Unnamed => {}
            InterfaceLabel::Index(i) => out.extend_from_slice(&i.to_be_bytes()),
            InterfaceLabel::Name(name) => {
                out.push(u8::try_from(name.len()).map_err(|_| AddressError::BadName)?);
                out.extend_from_slice(name.as_bytes());
            }
        }
        if let Some(nat) = &self.nat {
            out.push(mapping_code(nat.mapping));
            out.push(filtering_code(nat.filtering));
            match nat.allocation {
                PortAllocation::Preserving => out.push(0),
                PortAllocation::FixedOffset { offset } => {
                    out.push(1);
                    out.extend_from_slice(&offset.to_be_bytes());
                }
                PortAllocation::Sequential { stride } => {
                    out.push(2);
                    out.extend_from_slice(&stride.to_be_bytes());
                }
                PortAllocation::LocalPortDependent { stride } => {
                    out.push(3);
                    out.extend_from_slice(&stride.to_be_bytes());
                }
                PortAllocation::Random => out.push(4),
            }
        }
        out.push(count_byte(self.endpoints.len())?);
        for e in &self.endpoints {
            write_socket_addr(out, SocketAddr::new(e.ip, e.port));
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'_>) -> Result<Interface, AddressError> {
        let flags = r.u8()?;
        if flags & FLAG_RESERVED != 0 {
            return Err(AddressError::Reserved);
        }
        let label = match flags & FLAG_LABEL_MASK {
            0 => InterfaceLabel::Unnamed,
            1 => InterfaceLabel::Index(u32::from_be_bytes(r.array()?)),
            2 => {
                let len = usize::from(r.u8()?);
                let bytes = r.take(len)?;
                let name = core::str::from_utf8(bytes).map_err(|_| AddressError::BadName)?;
                InterfaceLabel::Name(name.to_owned())
            }
            _ => return Err(AddressError::Reserved),
        };
        let nat = if flags & FLAG_NAT != 0 {
            let mapping = match r.u8()? {
                0 => Mapping::EndpointIndependent,
                1 => Mapping::AddressDependent,
                2 => Mapping::AddressAndPortDependent,
                _ => return Err(AddressError::BadNat),
            };
            let filtering = match r.u8()? {
                0 => Filtering::EndpointIndependent,
                1 => Filtering::AddressDependent,
                2 => Filtering::AddressAndPortDependent,
                _ => return Err(AddressError::BadNat),
            };
            let allocation = match r.u8()? {
                0 => PortAllocation::Preserving,
                1 => PortAllocation::FixedOffset {
                    offset: i32::from_be_bytes(r.array()?),
                },
                2 => PortAllocation::Sequential {
                    stride: u16::from_be_bytes(r.array()?),
                },
                3 => PortAllocation::LocalPortDependent {
                    stride: u16::from_be_bytes(r.array()?),
                },
                4 => PortAllocation::Random,
                _ => return Err(AddressError::BadNat),
            };
            Some(NatInfo {
                mapping,
                filtering,
                allocation,
            })
        } else {
            None
        };
        let n = r.count(MAX_ENDPOINTS, Part::Endpoint)?;
        let mut endpoints = Vec::with_capacity(n);
        for _ in 0..n {
            let ip = match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                other => return Err(AddressError::BadFamily(other)),
            };
            let port = u16::from_be_bytes(r.array()?);
            endpoints.push(Endpoint { ip, port });
        }
        Ok(Interface {
            label,
            nat,
            endpoints,
        })
    }
}

fn mapping_code(m: Mapping) -> u8 {
    match m {
        Mapping::EndpointIndependent => 0,
        Mapping::AddressDependent => 1,
        Mapping::AddressAndPortDependent => 2,
    }
}

fn filtering_code(f: Filtering) -> u8 {
    match f {
        Filtering::EndpointIndependent => 0,
        Filtering::AddressDependent => 1,
        Filtering::AddressAndPortDependent => 2,
    }
}

fn has_duplicates<T: PartialEq>(items: &[T]) -> bool {
    items
        .iter()
        .enumerate()
        .any(|(i, a)| items.iter().take(i).any(|b| b == a))
}

fn count_byte(n: usize) -> Result<u8, AddressError> {
    u8::try_from(n).map_err(|_| AddressError::TooLarge)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], AddressError> {
        if self.0.len() < n {
            return Err(AddressError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], AddressError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, AddressError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    /// A count byte, checked against `max` before any entry is read.
    fn count(&mut self, max: usize, what: Part) -> Result<usize, AddressError> {
        let n = usize::from(self.u8()?);
        if n > max {
            return Err(AddressError::TooMany { what });
        }
        Ok(n)
    }
}

/// Appends `addr` in the binary form every p2pd message uses for a transport address: the
/// family (`4` or `6`), the IP's octets, the port (big-endian).
pub fn write_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Reads a transport address written by [`write_socket_addr`] from the front of `bytes`: the
/// address and the bytes after it, `None` if it is cut short or of an unknown family.
pub fn read_socket_addr(bytes: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&family, rest) = bytes.split_first()?;
    let (ip, rest) = match family {
        4 => {
            let (ip, rest) = rest.split_first_chunk::<4>()?;
            (IpAddr::from(*ip), rest)
        }
        6 => {
            let (ip, rest) = rest.split_first_chunk::<16>()?;
            (IpAddr::from(*ip), rest)
        }
        _ => return None,
    };
    let (port, rest) = rest.split_first_chunk::<2>()?;
    Some((SocketAddr::new(ip, u16::from_be_bytes(*port)), rest))
}

#[cfg(test)]
mod tests;
