//! The NAT behaviour vocabulary (RFC 4787 / RFC 5780), shared by the classifier and the simulator,
//! and its translation to p2pd's labels.

use core::time::Duration;

/// How a NAT chooses the external address and port of an outbound flow (RFC 4787 §4.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mapping {
    /// One mapping per internal endpoint, whatever the destination ("cone").
    EndpointIndependent,
    /// A new mapping for each destination IP.
    AddressDependent,
    /// A new mapping for each destination IP and port ("symmetric").
    AddressAndPortDependent,
}

/// Which inbound packets a NAT lets through an existing mapping (RFC 4787 §5).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Filtering {
    /// Anyone may send to the mapping ("full cone").
    EndpointIndependent,
    /// Only IPs the internal endpoint has sent to ("restricted cone").
    AddressDependent,
    /// Only IP and port pairs it has sent to ("port restricted").
    AddressAndPortDependent,
}

/// The RFC 4787 names: `endpoint-independent`, `address-dependent`, `address-and-port-dependent`.
impl core::fmt::Display for Mapping {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// The RFC 4787 names: `endpoint-independent`, `address-dependent`, `address-and-port-dependent`.
impl core::fmt::Display for Filtering {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// An inclusive range of external ports a NAT allocates from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// Lowest port.
    pub low: u16,
    /// Highest port.
    pub high: u16,
}

impl PortRange {
    /// Every non-zero port.
    pub const ALL: PortRange = PortRange {
        low: 1,
        high: 65535,
    };

    /// A range, or `None` if `low` is 0 or above `high`.
    pub fn new(low: u16, high: u16) -> Option<PortRange> {
        (low != 0 && low <= high).then_some(PortRange { low, high })
    }

    /// Whether `port` is inside.
    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }

    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.high)
            .saturating_sub(u32::from(self.low))
            .saturating_add(1)
    }

    /// Never true: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `port` moved into the range by wrapping around it (a true modulus, unlike p2pd's
    /// `field_wrap`).
    pub fn wrap(&self, port: i64) -> u16 {
        let span = i64::from(self.len());
        let offset = port
            .saturating_sub(i64::from(self.low))
            .rem_euclid(span.max(1));
        u16::try_from(offset.saturating_add(i64::from(self.low))).unwrap_or(self.low)
    }
}

/// How a NAT picks the external port of a new mapping.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortAllocation {
    /// The external port equals the local port (when free). p2pd: "equal delta".
    Preserving,
    /// External = local + a constant offset. p2pd: "preserving delta".
    FixedOffset {
        /// The offset (wraps within the port range).
        offset: i32,
    },
    /// Each new mapping takes the previous external port plus a stride, whatever the local port.
    /// p2pd: "independent delta".
    Sequential {
        /// The stride (non-zero).
        stride: u16,
    },
    /// External ports advance by a stride when the local port advances by one. p2pd: "dependent
    /// delta".
    LocalPortDependent {
        /// External ports per local port.
        stride: u16,
    },
    /// A random free port. p2pd: "random delta".
    Random,
}

/// In words, as the classifier's port-allocation verdicts are printed (`port preserving`,
/// `fixed offset +2`, `sequential, stride 1`, `local-port dependent, stride 2`, `random`).
impl core::fmt::Display for PortAllocation {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PortAllocation::Preserving => f.write_str("port preserving"),
            PortAllocation::FixedOffset { offset } => write!(f, "fixed offset {offset:+}"),
            PortAllocation::Sequential { stride } => write!(f, "sequential, stride {stride}"),
            PortAllocation::LocalPortDependent { stride } => {
                write!(f, "local-port dependent, stride {stride}")
            }
            PortAllocation::Random => f.write_str("random"),
        }
    }
}

/// Everything the classifier tries to learn about a NAT, and what the simulator's NAT boxes do.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Behaviour {
    /// Mapping behaviour.
    pub mapping: Mapping,
    /// Filtering behaviour.
    pub filtering: Filtering,
    /// Port allocation.
    pub allocation: PortAllocation,
    /// The external ports it allocates from.
    pub port_range: PortRange,
    /// Whether internal hosts can reach each other through their external addresses.
    pub hairpinning: bool,
    /// How long an idle mapping lives.
    pub mapping_lifetime: Duration,
}

impl Behaviour {
    /// A behaviour with the given mapping and filtering, port preservation, the full port range, no
    /// hairpinning and a 120 s mapping lifetime (RFC 4787's minimum recommendation is 2 minutes).
    pub fn new(mapping: Mapping, filtering: Filtering) -> Self {
        Behaviour {
            mapping,
            filtering,
            allocation: PortAllocation::Preserving,
            port_range: PortRange::ALL,
            hairpinning: false,
            mapping_lifetime: Duration::from_secs(120),
        }
    }

    /// The same behaviour with another port allocation.
    pub fn with_allocation(mut self, allocation: PortAllocation) -> Self {
        self.allocation = allocation;
        self
    }

    /// p2pd's label for this behaviour.
    pub fn p2pd(&self) -> P2pdLabel {
        let nat = match (self.mapping, self.filtering) {
            (Mapping::EndpointIndependent, Filtering::EndpointIndependent) => P2pdNatType::FullCone,
            (Mapping::EndpointIndependent, Filtering::AddressDependent) => P2pdNatType::Restricted,
            (Mapping::EndpointIndependent, Filtering::AddressAndPortDependent) => {
                P2pdNatType::PortRestricted
            }
            _ => P2pdNatType::Symmetric,
        };
        P2pdLabel {
            nat,
            delta: P2pdDelta::from(self.allocation),
        }
    }
}

/// What stands between a host and the internet.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Connectivity {
    /// A public address, nothing filters.
    Open,
    /// A public address behind a stateful firewall with this filtering.
    Firewall(Filtering),
    /// A NAT.
    Nat(Behaviour),
    /// No UDP gets through.
    Blocked,
}

impl Connectivity {
    /// p2pd's label.
    pub fn p2pd(&self) -> P2pdLabel {
        match self {
            Connectivity::Open => P2pdLabel {
                nat: P2pdNatType::OpenInternet,
                delta: P2pdDelta::Equal,
            },
            Connectivity::Firewall(_) => P2pdLabel {
                nat: P2pdNatType::SymmetricUdpFirewall,
                delta: P2pdDelta::Equal,
            },
            Connectivity::Nat(b) => b.p2pd(),
            Connectivity::Blocked => P2pdLabel {
                nat: P2pdNatType::Blocked,
                delta: P2pdDelta::NotApplicable,
            },
        }
    }
}

/// p2pd's NAT types, with p2pd's numbers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum P2pdNatType {
    /// 1: a public address.
    OpenInternet = 1,
    /// 2: a public address behind a firewall.
    SymmetricUdpFirewall = 2,
    /// 3: endpoint-independent mapping and filtering.
    FullCone = 3,
    /// 4: endpoint-independent mapping, address-dependent filtering.
    Restricted = 4,
    /// 5: endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestricted = 5,
    /// 6: mapping depends on the destination.
    Symmetric = 6,
    /// 7: no UDP.
    Blocked = 7,
}

/// p2pd's port-allocation ("delta") types, with their values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum P2pdDelta {
    /// 1: not applicable.
    NotApplicable,
    /// 2: external port = local port.
    Equal,
    /// 3: external - local is constant (p2pd records no value).
    Preserving,
    /// 4: successive external ports differ by the value, whatever the local port.
    Independent(u16),
    /// 5: external ports differ by the value per local port.
    Dependent(u16),
    /// 6: none of the above.
    Random,
}

impl P2pdDelta {
    /// p2pd's number for the type.
    pub fn number(&self) -> u8 {
        match self {
            P2pdDelta::NotApplicable => 1,
            P2pdDelta::Equal => 2,
            P2pdDelta::Preserving => 3,
            P2pdDelta::Independent(_) => 4,
            P2pdDelta::Dependent(_) => 5,
            P2pdDelta::Random => 6,
        }
    }

    /// p2pd's value (0 where p2pd records none).
    pub fn value(&self) -> u16 {
        match self {
            P2pdDelta::Independent(v) | P2pdDelta::Dependent(v) => *v,
            _ => 0,
        }
    }
}

impl From<PortAllocation> for P2pdDelta {
    fn from(a: PortAllocation) -> Self {
        match a {
            PortAllocation::Preserving => P2pdDelta::Equal,
            PortAllocation::FixedOffset { offset: 0 } => P2pdDelta::Equal,
            PortAllocation::FixedOffset { .. } => P2pdDelta::Preserving,
            PortAllocation::Sequential { stride } => P2pdDelta::Independent(stride),
            PortAllocation::LocalPortDependent { stride } => P2pdDelta::Dependent(stride),
            PortAllocation::Random => P2pdDelta::Random,
        }
    }
}

/// A NAT type with its delta, as p2pd reports them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct P2pdLabel {
    /// The NAT type.
    pub nat: P2pdNatType,
    /// The delta type and value.
    pub delta: P2pdDelta,
}

impl core::fmt::Display for P2pdLabel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let nat = match self.nat {
            P2pdNatType::OpenInternet => "open internet",
            P2pdNatType::SymmetricUdpFirewall => "UDP firewall",
            P2pdNatType::FullCone => "full cone",
            P2pdNatType::Restricted => "restricted",
            P2pdNatType::PortRestricted => "port restricted",
            P2pdNatType::Symmetric => "symmetric",
            P2pdNatType::Blocked => "blocked",
        };
        let delta = match self.delta {
            P2pdDelta::NotApplicable => "n/a",
            P2pdDelta::Equal => "equal",
            P2pdDelta::Preserving => "preserving",
            P2pdDelta::Independent(_) => "independent",
            P2pdDelta::Dependent(_) => "dependent",
            P2pdDelta::Random => "random",
        };
        match self.delta {
            P2pdDelta::Independent(v) | P2pdDelta::Dependent(v) => {
                write!(f, "{nat}, {delta} delta {v}")
            }
            _ => write!(f, "{nat}, {delta} delta"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4787_to_p2pd_labels() {
        use Filtering as F;
        use Mapping as M;
        let cases = [
            (
                M::EndpointIndependent,
                F::EndpointIndependent,
                P2pdNatType::FullCone,
            ),
            (
                M::EndpointIndependent,
                F::AddressDependent,
                P2pdNatType::Restricted,
            ),
            (
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                P2pdNatType::PortRestricted,
            ),
            (
                M::AddressDependent,
                F::AddressDependent,
                P2pdNatType::Symmetric,
            ),
            (
                M::AddressAndPortDependent,
                F::AddressDependent,
                P2pdNatType::Symmetric,
            ),
            (
                M::AddressAndPortDependent,
                F::EndpointIndependent,
                P2pdNatType::Symmetric,
            ),
        ];
        for (m, f, want) in cases {
            assert_eq!(Behaviour::new(m, f).p2pd().nat, want, "{m:?} {f:?}");
        }
        let b = Behaviour::new(M::AddressAndPortDependent, F::AddressAndPortDependent)
            .with_allocation(PortAllocation::Sequential { stride: 1 });
        assert_eq!(b.p2pd().to_string(), "symmetric, independent delta 1");
        assert_eq!(b.p2pd().delta.number(), 4);
        assert_eq!(Connectivity::Blocked.p2pd().nat as u8, 7);
        assert_eq!(
            Connectivity::Firewall(F::AddressDependent).p2pd().nat,
            P2pdNatType::SymmetricUdpFirewall
        );
    }

    #[test]
    fn port_range_wraps_like_a_modulus() {
        let r = PortRange::new(2000, 65535).unwrap();
        assert_eq!(r.wrap(65536), 2000);
        assert_eq!(r.wrap(65537), 2001);
        assert_eq!(r.wrap(1999), 65535);
        assert_eq!(r.wrap(3000), 3000);
        assert_eq!(PortRange::ALL.len(), 65535);
        assert!(PortRange::new(0, 5).is_none());
        assert!(PortRange::new(6, 5).is_none());
    }
}
