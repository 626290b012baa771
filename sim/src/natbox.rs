//! NAT boxes: the mapping table, port allocation and filtering of `p2pd-nat`'s behaviour model.
//!
//! The table is keyed by [`Protocol`], so TCP shares the mapping, port allocation and filtering
//! logic with UDP. TCP specifics ([`NatTcpConfig`]):
//!
//! - only an outbound segment with SYN set (a SYN, or the SYN-ACK of an inside listener) creates a
//!   mapping; any other outbound segment without a mapping is dropped
//!   ([`NatStats::tcp_dropped_no_mapping`]);
//! - inbound segments pass the filtering behaviour like datagrams, so an unsolicited SYN reaches the
//!   inside host only through endpoint-independent filtering (or from a remote the mapping has
//!   contacted: crossing SYNs make a simultaneous open). A SYN dropped for filtering or for no
//!   mapping is dropped silently by default, or answered with an RST from the box's public address
//!   ([`NatTcpConfig::rst_unsolicited_syn`]);
//! - lifetime: a TCP mapping lives [`NatTcpConfig::idle_lifetime`] after each outbound segment; once
//!   a FIN or RST crosses it in either direction it lives only
//!   [`NatTcpConfig::transitory_lifetime`] after the last outbound segment, until an outbound SYN
//!   opens it again. The state is per mapping, not per connection: one closing connection shortens
//!   the lifetime of every connection sharing the mapping (a simplification).

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

use p2pd_nat::{Behaviour, Filtering, Mapping, PortAllocation};
use p2pd_proto::{Instant, Rng};

use crate::link::LinkConfig;
use crate::tcp::TcpHeader;

/// The transport protocol of a simulated packet or NAT mapping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

/// How a NAT box treats TCP ([`crate::Sim::set_nat_tcp`]); see the module docs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NatTcpConfig {
    /// How long a TCP mapping lives after an outbound segment (RFC 5382 asks for at least 2 h 4 min;
    /// default 7440 s).
    pub idle_lifetime: Duration,
    /// How long it lives once a FIN or RST was seen (RFC 5382's transitory 4 min; default 240 s).
    pub transitory_lifetime: Duration,
    /// Answer an inbound SYN the box drops (filtered, or no mapping) with an RST instead of
    /// dropping it silently (default: silent).
    pub rst_unsolicited_syn: bool,
}

impl Default for NatTcpConfig {
    fn default() -> Self {
        NatTcpConfig {
            idle_lifetime: Duration::from_secs(7440),
            transitory_lifetime: Duration::from_secs(240),
            rst_unsolicited_syn: false,
        }
    }
}

/// A NAT box's counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings removed after `mapping_lifetime` without outbound traffic.
    pub expired: u64,
    /// Outbound packets translated.
    pub translated_out: u64,
    /// Inbound packets translated and delivered inside.
    pub translated_in: u64,
    /// Inbound packets dropped because no live mapping had their port.
    pub dropped_no_mapping: u64,
    /// Inbound packets dropped by the filtering behaviour.
    pub dropped_filtered: u64,
    /// Packets from inside to the box's own public IP dropped because hairpinning is off.
    pub dropped_hairpin: u64,
    /// Outbound packets dropped because the port range was exhausted.
    pub dropped_no_port: u64,
    /// Outbound TCP segments without SYN dropped because no mapping existed.
    pub tcp_dropped_no_mapping: u64,
    /// Inbound SYNs dropped silently (filtered, or no mapping).
    pub tcp_syn_dropped: u64,
    /// RSTs the box sent for inbound SYNs it dropped.
    pub tcp_rst_sent: u64,
}

/// One live mapping of a NAT box, as [`crate::Sim::nat_mapping_table`] lists it (ground truth for
/// tests).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NatMapping {
    /// UDP or TCP.
    pub protocol: Protocol,
    /// The inside endpoint.
    pub internal: SocketAddrV4,
    /// The destination IP the mapping is for (address(-and-port)-dependent mapping), else `None`.
    pub remote_ip: Option<Ipv4Addr>,
    /// The destination port the mapping is for (address-and-port-dependent mapping), else `None`.
    pub remote_port: Option<u16>,
    /// The box's public endpoint for it.
    pub external: SocketAddrV4,
}

/// What a mapping is keyed by: the protocol and internal endpoint, plus the destination's IP (and
/// port) for address(-and-port)-dependent mapping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MappingKey {
    protocol: Protocol,
    internal: SocketAddrV4,
    remote_ip: Option<Ipv4Addr>,
    remote_port: Option<u16>,
}

#[derive(Clone, Debug)]
struct Entry {
    external_port: u16,
    internal: SocketAddrV4,
    /// Remote endpoints contacted from this mapping (bounded by [`MAX_PERMITTED`]).
    permitted: BTreeSet<SocketAddrV4>,
    expires: Instant,
    /// TCP: a FIN or RST crossed the mapping (transitory lifetime).
    closing: bool,
}

/// Most remote endpoints remembered per mapping; beyond it the lowest address is forgotten first.
const MAX_PERMITTED: usize = 4096;

/// One NAT box: a public IP, a behaviour and a mapping table.
#[derive(Debug)]
pub(crate) struct NatBox {
    pub(crate) public_ip: Ipv4Addr,
    pub(crate) behaviour: Behaviour,
    pub(crate) link: LinkConfig,
    pub(crate) stats: NatStats,
    pub(crate) tcp: NatTcpConfig,
    rng: Rng,
    mappings: BTreeMap<MappingKey, Entry>,
    by_port: BTreeMap<(Protocol, u16), MappingKey>,
    /// The last port allocated, per protocol ([`PortAllocation::Sequential`]).
    last_port: BTreeMap<Protocol, u16>,
    /// The first mapping's (local, external) ports ([`PortAllocation::LocalPortDependent`]).
    first: BTreeMap<Protocol, (u16, u16)>,
    /// No mapping expires before this.
    next_expiry: Instant,
}

/// Why an inbound packet was dropped.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum InboundDrop {
    NoMapping,
    Filtered,
}

impl NatBox {
    pub(crate) fn new(public_ip: Ipv4Addr, behaviour: Behaviour, rng: Rng) -> Self {
        NatBox {
            public_ip,
            behaviour,
            link: LinkConfig::IDEAL,
            stats: NatStats::default(),
            tcp: NatTcpConfig::default(),
            rng,
            mappings: BTreeMap::new(),
            by_port: BTreeMap::new(),
            last_port: BTreeMap::new(),
            first: BTreeMap::new(),
            next_expiry: Instant::MAX,
        }
    }

    /// A new public IP: every mapping is gone.
    pub(crate) fn renumber(&mut self, public_ip: Ipv4Addr) {
        self.public_ip = public_ip;
        self.mappings.clear();
        self.by_port.clear();
        self.last_port.clear();
        self.first.clear();
        self.next_expiry = Instant::MAX;
    }

    /// Live mappings.
    pub(crate) fn mapping_count(&self) -> usize {
        self.mappings.len()
    }

    /// Every mapping in the table, in key order (expired ones may linger until the next packet).
    pub(crate) fn mapping_table(&self) -> Vec<NatMapping> {
        self.mappings
            .iter()
            .map(|(key, entry)| NatMapping {
                protocol: key.protocol,
                internal: entry.internal,
                remote_ip: key.remote_ip,
                remote_port: key.remote_port,
                external: SocketAddrV4::new(self.public_ip, entry.external_port),
            })
            .collect()
    }

    /// Translates an outbound packet from `internal` to `remote`: finds or creates the mapping,
    /// permits `remote`, refreshes the expiry. Returns the external endpoint, or `None` (dropped) if
    /// no port is free, or for a TCP segment without SYN that has no mapping.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        protocol: Protocol,
        internal: SocketAddrV4,
        remote: SocketAddrV4,
        tcp: Option<TcpHeader>,
    ) -> Option<SocketAddrV4> {
        self.expire(now);
        let key = MappingKey {
            protocol,
            internal,
            remote_ip: match self.behaviour.mapping {
                Mapping::EndpointIndependent => None,
                _ => Some(*remote.ip()),
            },
            remote_port: match self.behaviour.mapping {
                Mapping::AddressAndPortDependent => Some(remote.port()),
                _ => None,
            },
        };
        if !self.mappings.contains_key(&key) {
            if tcp.is_some_and(|h| !h.has(TcpHeader::SYN)) {
                self.stats.tcp_dropped_no_mapping += 1;
                return None;
            }
            let Some(port) = self.allocate(protocol, internal.port()) else {
                self.stats.dropped_no_port += 1;
                return None;
            };
            self.stats.mappings_created += 1;
            self.by_port.insert((protocol, port), key);
            self.mappings.insert(
                key,
                Entry {
                    external_port: port,
                    internal,
                    permitted: BTreeSet::new(),
                    expires: now,
                    closing: false,
                },
            );
        }
        let udp_lifetime = self.behaviour.mapping_lifetime;
        let tcp_config = self.tcp;
        let entry = self.mappings.get_mut(&key)?;
        if entry.permitted.len() >= MAX_PERMITTED && !entry.permitted.contains(&remote) {
            entry.permitted.pop_first();
        }
        entry.permitted.insert(remote);
        let lifetime = match tcp {
            None => udp_lifetime,
            Some(h) => {
                if h.has(TcpHeader::FIN) || h.has(TcpHeader::RST) {
                    entry.closing = true;
                } else if h.is_syn_only() {
                    entry.closing = false;
                }
                if entry.closing {
                    tcp_config.transitory_lifetime
                } else {
                    tcp_config.idle_lifetime
                }
            }
        };
        entry.expires = now + lifetime;
        self.next_expiry = self.next_expiry.min(entry.expires);
        self.stats.translated_out += 1;
        Some(SocketAddrV4::new(self.public_ip, entry.external_port))
    }

    /// Translates an inbound packet from `remote` to the box's `external_port`: the internal
    /// endpoint, or why it is dropped (counted).
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        protocol: Protocol,
        remote: SocketAddrV4,
        external_port: u16,
        tcp: Option<TcpHeader>,
    ) -> Result<SocketAddrV4, InboundDrop> {
        self.expire(now);
        let entry = self
            .by_port
            .get(&(protocol, external_port))
            .and_then(|key| self.mappings.get_mut(key));
        let Some(entry) = entry else {
            self.stats.dropped_no_mapping += 1;
            return Err(InboundDrop::NoMapping);
        };
        let allowed = match self.behaviour.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => entry.permitted.iter().any(|p| p.ip() == remote.ip()),
            Filtering::AddressAndPortDependent => entry.permitted.contains(&remote),
        };
        if !allowed {
            self.stats.dropped_filtered += 1;
            return Err(InboundDrop::Filtered);
        }
        if tcp.is_some_and(|h| h.has(TcpHeader::FIN) || h.has(TcpHeader::RST)) && !entry.closing {
            entry.closing = true;
            entry.expires = entry.expires.min(now + self.tcp.transitory_lifetime);
            self.next_expiry = self.next_expiry.min(entry.expires);
        }
        self.stats.translated_in += 1;
        Ok(entry.internal)
    }

    /// Removes every mapping whose lifetime has run out.
    fn expire(&mut self, now: Instant) {
        if now < self.next_expiry {
            return;
        }
        let mut next = Instant::MAX;
        let mut gone = Vec::new();
        for (key, entry) in &self.mappings {
            if entry.expires <= now {
                gone.push((*key, entry.external_port));
            } else {
                next = next.min(entry.expires);
            }
        }
        for (key, port) in gone {
            self.mappings.remove(&key);
            self.by_port.remove(&(key.protocol, port));
            self.stats.expired += 1;
        }
        self.next_expiry = next;
    }

    /// Picks the external port of a new mapping for local port `local`:
    ///
    /// - `Preserving`: `local` (wrapped into the range);
    /// - `FixedOffset`: `local + offset`, wrapped into the range;
    /// - `Sequential`: the previous allocation plus `stride` (the first takes `local`); a taken port
    ///   is skipped by further strides;
    /// - `LocalPortDependent`: the first mapping's external port plus `(local - first local) * stride`
    ///   (the first takes `local`);
    /// - `Random`: a uniformly random port of the range.
    ///
    /// If the chosen port is taken, the next free port upwards (wrapping in the range) is used.
    fn allocate(&mut self, protocol: Protocol, local: u16) -> Option<u16> {
        let range = self.behaviour.port_range;
        let local = i64::from(local);
        let preferred = match self.behaviour.allocation {
            PortAllocation::Preserving => range.wrap(local),
            PortAllocation::FixedOffset { offset } => range.wrap(local + i64::from(offset)),
            PortAllocation::Sequential { stride } => match self.last_port.get(&protocol).copied() {
                None => range.wrap(local),
                Some(last) => {
                    let mut port = range.wrap(i64::from(last) + i64::from(stride));
                    for _ in 0..range.len() {
                        if !self.by_port.contains_key(&(protocol, port)) {
                            break;
                        }
                        port = range.wrap(i64::from(port) + i64::from(stride));
                    }
                    port
                }
            },
            PortAllocation::LocalPortDependent { stride } => {
                match self.first.get(&protocol).copied() {
                    None => range.wrap(local),
                    Some((first_local, first_external)) => range.wrap(
                        i64::from(first_external)
                            + (local - i64::from(first_local)) * i64::from(stride),
                    ),
                }
            }
            PortAllocation::Random => {
                let offset = self.rng.below(u64::from(range.len()));
                range.wrap(i64::from(range.low) + i64::try_from(offset).unwrap_or(0))
            }
        };
        let port = self.next_free(protocol, preferred)?;
        self.last_port.insert(protocol, port);
        self.first
            .entry(protocol)
            .or_insert((u16::try_from(local).unwrap_or(0), port));
        Some(port)
    }

    /// The first free port at or after `start`, wrapping within the range.
    fn next_free(&self, protocol: Protocol, start: u16) -> Option<u16> {
        let range = self.behaviour.port_range;
        (0..i64::from(range.len()))
            .map(|i| range.wrap(i64::from(start) + i))
            .find(|p| !self.by_port.contains_key(&(protocol, *p)))
    }
}
