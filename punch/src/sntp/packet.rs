//! The NTP packet codec (RFC 5905 §7.3 header, as RFC 4330 uses it) and the strict checks an SNTP
//! client applies to a server's reply.
//!
//! Every 48-byte prefix decodes (each bit pattern is some header); what a client accepts is decided
//! separately by [`check_reply`], which names the first thing wrong with a reply.

use core::fmt;

/// The length of an NTP header without extension fields or MAC: every SNTP request and reply.
pub const PACKET_LEN: usize = 48;

/// Mode 3: a client request.
pub const MODE_CLIENT: u8 = 3;
/// Mode 4: a server reply.
pub const MODE_SERVER: u8 = 4;
/// The version this client sends.
pub const VERSION: u8 = 4;
/// Leap indicator 3: the server's clock is not synchronised.
pub const LEAP_UNSYNCHRONIZED: u8 = 3;
/// Stratum 16 (and above): unsynchronised (RFC 5905 §7.3).
pub const STRATUM_UNSYNCHRONIZED: u8 = 16;

/// Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
pub const NTP_TO_UNIX_SECONDS: u64 = 2_208_988_800;

/// One NTP header, field by field. Bit fields are kept in the low bits of their `u8`s; encoding
/// masks them to their width (2, 3 and 3 bits).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NtpPacket {
    /// Leap indicator (2 bits): 0 none, 1 last minute has 61 s, 2 has 59 s, 3 unsynchronised.
    pub leap: u8,
    /// Version number (3 bits).
    pub version: u8,
    /// Mode (3 bits): 3 client, 4 server.
    pub mode: u8,
    /// Stratum: 0 kiss-o'-death, 1 primary, 2..=15 secondary, 16 unsynchronised.
    pub stratum: u8,
    /// Poll interval exponent (log2 seconds).
    pub poll: i8,
    /// Precision exponent (log2 seconds).
    pub precision: i8,
    /// Round-trip delay to the reference clock, NTP short format (16.16 seconds).
    pub root_delay: u32,
    /// Dispersion to the reference clock, NTP short format (16.16 seconds).
    pub root_dispersion: u32,
    /// Reference id; with stratum 0 it is the ASCII kiss code.
    pub reference_id: [u8; 4],
    /// When the server's clock was last set (NTP timestamp, 32.32 seconds since 1900 in its era).
    pub reference_ts: u64,
    /// Originate timestamp: in a reply, the request's transmit timestamp copied back.
    pub originate_ts: u64,
    /// Receive timestamp: when the server got the request (T2).
    pub receive_ts: u64,
    /// Transmit timestamp: when the server sent the reply (T3); in our request, a random nonce.
    pub transmit_ts: u64,
}

/// A datagram too short to hold an NTP header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TooShort {
    /// The datagram's length.
    pub len: usize,
}

impl fmt::Display for TooShort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes is shorter than an NTP header ({PACKET_LEN})",
            self.len
        )
    }
}

impl std::error::Error for TooShort {}

impl NtpPacket {
    /// An SNTP client request (version 4, mode 3) whose transmit timestamp is `nonce`. Every other
    /// field is zero, as RFC 4330 §5 recommends.
    pub fn client_request(nonce: u64) -> NtpPacket {
        NtpPacket {
            version: VERSION,
            mode: MODE_CLIENT,
            transmit_ts: nonce,
            ..NtpPacket::default()
        }
    }

    /// Decodes the first [`PACKET_LEN`] bytes; anything after them (extension fields, a MAC) is
    /// ignored.
    pub fn decode(bytes: &[u8]) -> Result<NtpPacket, TooShort> {
        let header: &[u8; PACKET_LEN] = bytes
            .get(..PACKET_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(TooShort { len: bytes.len() })?;
        let [first, stratum, poll, precision, r0, r1, r2, r3, d0, d1, d2, d3, i0, i1, i2, i3, rest @ ..] =
            *header;
        let ts = |at: usize| -> u64 {
            let mut raw = [0u8; 8];
            if let Some(src) = rest.get(at..at.saturating_add(8)) {
                raw.copy_from_slice(src);
            }
            u64::from_be_bytes(raw)
        };
        Ok(NtpPacket {
            leap: first >> 6,
            version: (first >> 3) & 0b111,
            mode: first & 0b111,
            stratum,
            poll: i8::from_be_bytes([poll]),
            precision: i8::from_be_bytes([precision]),
            root_delay: u32::from_be_bytes([r0, r1, r2, r3]),
            root_dispersion: u32::from_be_bytes([d0, d1, d2, d3]),
            reference_id: [i0, i1, i2, i3],
            reference_ts: ts(0),
            originate_ts: ts(8),
            receive_ts: ts(16),
            transmit_ts: ts(24),
        })
    }

    /// Writes the header into `out` and returns [`PACKET_LEN`], or `None` if `out` is shorter.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let out = out.get_mut(..PACKET_LEN)?;
        let first = ((self.leap & 0b11) << 6) | ((self.version & 0b111) << 3) | (self.mode & 0b111);
        let bytes = [first, self.stratum]
            .into_iter()
            .chain(self.poll.to_be_bytes())
            .chain(self.precision.to_be_bytes())
            .chain(self.root_delay.to_be_bytes())
            .chain(self.root_dispersion.to_be_bytes())
            .chain(self.reference_id)
            .chain(self.reference_ts.to_be_bytes())
            .chain(self.originate_ts.to_be_bytes())
            .chain(self.receive_ts.to_be_bytes())
            .chain(self.transmit_ts.to_be_bytes());
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = src;
        }
        Some(PACKET_LEN)
    }

    /// The kiss code, if this is a kiss-o'-death packet (stratum 0).
    pub fn kiss_code(&self) -> Option<KissCode> {
        (self.stratum == 0).then_some(KissCode(self.reference_id))
    }
}

/// A kiss-o'-death code (RFC 5905 §7.4): four ASCII letters such as `RATE`, `DENY` or `RSTR`.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct KissCode(pub [u8; 4]);

impl KissCode {
    /// The server asks the client to slow down.
    pub const RATE: KissCode = KissCode(*b"RATE");
    /// Access denied.
    pub const DENY: KissCode = KissCode(*b"DENY");
    /// Access restricted.
    pub const RSTR: KissCode = KissCode(*b"RSTR");

    /// The code as text, if it is printable ASCII.
    pub fn as_str(&self) -> Option<&str> {
        let text = core::str::from_utf8(&self.0).ok()?;
        text.bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ')
            .then_some(text)
    }
}

impl fmt::Debug for KissCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "KissCode({s:?})"),
            None => write!(f, "KissCode({:02x?})", self.0),
        }
    }
}

impl fmt::Display for KissCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => f.write_str(s),
            None => write!(f, "{:02x?}", self.0),
        }
    }
}

/// Why a reply was not accepted as a time sample: the first check it failed, in [`check_reply`]'s
/// order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// Shorter than an NTP header.
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Not a server reply (mode 4).
    NotServerMode {
        /// The mode it had.
        mode: u8,
    },
    /// Neither version 3 nor 4.
    UnsupportedVersion {
        /// The version it had.
        version: u8,
    },
    /// Its originate timestamp is not the nonce of any query we have in flight.
    UnknownOriginate,
    /// A kiss-o'-death (stratum 0): the server refuses; we stop asking it.
    Kiss(KissCode),
    /// The server's clock is unsynchronised (leap indicator 3 or stratum 16 or more).
    Unsynchronized {
        /// The leap indicator.
        leap: u8,
        /// The stratum.
        stratum: u8,
    },
    /// The transmit timestamp (T3) is zero.
    ZeroTransmit,
    /// The receive timestamp (T2) is zero.
    ZeroReceive,
    /// The server says it sent the reply before it received the request (T3 < T2).
    TransmitBeforeReceive,
    /// The server's own distance to its reference (root delay / 2 + root dispersion) exceeds the
    /// configured bound.
    RootDistanceTooLarge {
        /// The root distance, in nanoseconds.
        root_distance_ns: u64,
    },
    /// The timestamps give a negative round trip or an offset beyond ±292 years.
    ImplausibleTimes,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::TooShort { len } => write!(f, "{len} bytes is too short"),
            RejectReason::NotServerMode { mode } => write!(f, "mode {mode} is not a server reply"),
            RejectReason::UnsupportedVersion { version } => write!(f, "version {version}"),
            RejectReason::UnknownOriginate => f.write_str("originate timestamp matches no query"),
            RejectReason::Kiss(code) => write!(f, "kiss-o'-death {code}"),
            RejectReason::Unsynchronized { leap, stratum } => {
                write!(f, "server unsynchronised (leap {leap}, stratum {stratum})")
            }
            RejectReason::ZeroTransmit => f.write_str("zero transmit timestamp"),
            RejectReason::ZeroReceive => f.write_str("zero receive timestamp"),
            RejectReason::TransmitBeforeReceive => f.write_str("transmit before receive"),
            RejectReason::RootDistanceTooLarge { root_distance_ns } => {
                write!(f, "root distance {root_distance_ns} ns too large")
            }
            RejectReason::ImplausibleTimes => f.write_str("implausible timestamps"),
        }
    }
}

/// Checks the fields of a reply that do not depend on which query it answers, in this order: mode
/// 4, version 3 or 4. (The originate timestamp is matched by the machine before the remaining
/// checks of [`check_reply`].)
pub fn check_header(packet: &NtpPacket) -> Result<(), RejectReason> {
    if packet.mode != MODE_SERVER {
        return Err(RejectReason::NotServerMode { mode: packet.mode });
    }
    if !(3..=4).contains(&packet.version) {
        return Err(RejectReason::UnsupportedVersion {
            version: packet.version,
        });
    }
    Ok(())
}

/// Checks a reply whose originate timestamp already matched a query, in this order: kiss-o'-death
/// (stratum 0), unsynchronised (leap 3 or stratum ≥ 16), zero T3, zero T2, T3 < T2 (compared as
/// NTP timestamps of one era), root distance beyond `max_root_distance_ns`.
pub fn check_reply(packet: &NtpPacket, max_root_distance_ns: u64) -> Result<(), RejectReason> {
    check_header(packet)?;
    if let Some(code) = packet.kiss_code() {
        return Err(RejectReason::Kiss(code));
    }
    if packet.leap == LEAP_UNSYNCHRONIZED || packet.stratum >= STRATUM_UNSYNCHRONIZED {
        return Err(RejectReason::Unsynchronized {
            leap: packet.leap,
            stratum: packet.stratum,
        });
    }
    if packet.transmit_ts == 0 {
        return Err(RejectReason::ZeroTransmit);
    }
    if packet.receive_ts == 0 {
        return Err(RejectReason::ZeroReceive);
    }
    // Serial-number comparison, so a reply straddling the 2036 era boundary is not misread.
    if (packet.transmit_ts.wrapping_sub(packet.receive_ts) as i64) < 0 {
        return Err(RejectReason::TransmitBeforeReceive);
    }
    let root_distance_ns = root_distance_ns(packet);
    if root_distance_ns > max_root_distance_ns {
        return Err(RejectReason::RootDistanceTooLarge { root_distance_ns });
    }
    Ok(())
}

/// Root delay / 2 + root dispersion, in nanoseconds (each rounded up).
pub fn root_distance_ns(packet: &NtpPacket) -> u64 {
    short_to_nanos(packet.root_delay)
        .div_ceil(2)
        .saturating_add(short_to_nanos(packet.root_dispersion))
}

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// An NTP short (16.16 seconds) in nanoseconds, rounded up.
pub fn short_to_nanos(short: u32) -> u64 {
    // At most 2^32 · 10^9 < 2^62: no overflow.
    (u64::from(short).saturating_mul(NANOS_PER_SECOND)).div_ceil(1 << 16)
}

/// Nanoseconds in one NTP era (2^32 seconds).
const ERA_NANOS: i128 = (1i128 << 32) * NANOS_PER_SECOND as i128;

/// Converts an NTP timestamp to nanoseconds since the Unix epoch, choosing the NTP era (every 2^32
/// seconds, the next begins in 2036) that puts it nearest to `near_unix_ns` (our own idea of the
/// time). The fraction is truncated: the result is at most 1 ns early.
pub fn ntp_to_unix_nanos(ts: u64, near_unix_ns: i128) -> i128 {
    let seconds = i128::from(ts >> 32);
    let fraction = i128::from(ts & 0xffff_ffff);
    let fraction_ns = fraction.saturating_mul(i128::from(NANOS_PER_SECOND)) >> 32;
    let in_era0 = seconds
        .saturating_sub(i128::from(NTP_TO_UNIX_SECONDS))
        .saturating_mul(i128::from(NANOS_PER_SECOND))
        .saturating_add(fraction_ns);
    let mut best = in_era0;
    for era in -1i128..=3 {
        let candidate = in_era0.saturating_add(era.saturating_mul(ERA_NANOS));
        if candidate.abs_diff(near_unix_ns) < best.abs_diff(near_unix_ns) {
            best = candidate;
        }
    }
    best
}

/// Converts nanoseconds since the Unix epoch to an NTP timestamp (era folded away, fraction rounded
/// down). For servers built in tests and fuzzers; the client never sends its clock.
pub fn unix_nanos_to_ntp(unix_ns: i128) -> u64 {
    let since_1900 = unix_ns.saturating_add(
        i128::from(NTP_TO_UNIX_SECONDS).saturating_mul(i128::from(NANOS_PER_SECOND)),
    );
    let in_era = since_1900.rem_euclid(ERA_NANOS);
    let seconds = in_era / 1_000_000_000;
    let nanos = in_era % 1_000_000_000;
    // Round the fraction up so that converting back (which truncates) gives the same nanosecond.
    let fraction = (nanos << 32).saturating_add(999_999_999) / 1_000_000_000;
    let fraction = u64::try_from(fraction).unwrap_or(u64::from(u32::MAX));
    let seconds = u64::try_from(seconds).unwrap_or(0);
    (seconds << 32) | fraction.min(u64::from(u32::MAX))
}

#[cfg(test)]
mod tests;
