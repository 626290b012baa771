//! What an on-path observer saw: a reader of classic pcap files (what `tcpdump -w` writes), the
//! IPv4 TCP segments in them, one direction of a TCP connection put back in sequence order, and a
//! search for any 32-byte window of known bytes (does a capture hold some of a plaintext?).
//!
//! Nothing fancy: no pcapng, no IPv6, no IP fragments, no reassembly beyond dropping the bytes a
//! retransmission repeats.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Link types of the pcap header this reader understands.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;

/// A classic pcap file, read whole.
#[derive(Debug, Default)]
pub struct Pcap {
    /// The link type of every frame (1: Ethernet, 101: raw IP).
    pub link_type: u32,
    /// The snap length the capture was taken with.
    pub snap_len: u32,
    /// Every frame's captured bytes, in capture order.
    pub frames: Vec<Vec<u8>>,
    /// How many frames were captured shorter than they were on the wire.
    pub truncated: usize,
}

fn u32_at(bytes: &[u8], at: usize, swapped: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if swapped {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

impl Pcap {
    /// Reads a classic pcap file (either byte order, micro- or nanosecond timestamps). A file cut
    /// short in its last record (the writer was killed) keeps the whole records before it.
    pub fn parse(bytes: &[u8]) -> Result<Pcap, String> {
        let magic = bytes
            .get(0..4)
            .ok_or("shorter than a pcap header")?
            .try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| "shorter than a pcap header")?;
        let swapped = match magic {
            0xa1b2_c3d4 | 0xa1b2_3c4d => false,
            0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
            other => return Err(format!("not a classic pcap file (magic {other:#010x})")),
        };
        let snap_len = u32_at(bytes, 16, swapped).ok_or("shorter than a pcap header")?;
        let link_type = u32_at(bytes, 20, swapped).ok_or("shorter than a pcap header")? & 0xffff;
        let mut pcap = Pcap {
            link_type,
            snap_len,
            ..Pcap::default()
        };
        let mut at = 24;
        while let (Some(incl), Some(orig)) = (
            u32_at(bytes, at + 8, swapped),
            u32_at(bytes, at + 12, swapped),
        ) {
            let start = at + 16;
            let Some(frame) = bytes.get(start..start + incl as usize) else {
                break;
            };
            if orig > incl {
                pcap.truncated += 1;
            }
            pcap.frames.push(frame.to_vec());
            at = start + incl as usize;
        }
        Ok(pcap)
    }

    /// The IPv4 TCP segments among the frames, in capture order.
    pub fn tcp_segments(&self) -> Vec<TcpSegment> {
        self.frames
            .iter()
            .filter_map(|f| TcpSegment::from_frame(self.link_type, f))
            .collect()
    }
}

/// One IPv4 TCP segment of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub seq: u32,
    /// The TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl TcpSegment {
    pub const SYN: u8 = 0x02;

    /// The segment a frame of `link_type` carries, if it is an unfragmented IPv4 TCP segment.
    pub fn from_frame(link_type: u32, frame: &[u8]) -> Option<TcpSegment> {
        let ip = match link_type {
            LINKTYPE_ETHERNET => {
                let mut at = 12;
                let mut ether_type = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
                while ether_type == 0x8100 || ether_type == 0x88a8 {
                    at += 4; // 802.1Q / 802.1ad tag
                    ether_type = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
                }
                if ether_type != 0x0800 {
                    return None;
                }
                frame.get(at + 2..)?
            }
            LINKTYPE_RAW => frame,
            _ => return None,
        };
        let first = *ip.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 {
            return None;
        }
        let frag = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?);
        if frag & 0x3fff != 0 {
            return None; // a fragment (MF set or a non-zero offset)
        }
        // The IP total length bounds the packet (Ethernet pads short frames); 0 (a segmentation
        // offload super-packet) means "as captured".
        let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
        let ip = if total == 0 {
            ip
        } else {
            ip.get(..total.min(ip.len()))?
        };
        let addr = |at: usize| -> Option<Ipv4Addr> {
            let b: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
            Some(Ipv4Addr::from(b))
        };
        let (src_ip, dst_ip) = (addr(12)?, addr(16)?);
        let tcp = ip.get(ihl..)?;
        let port = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes(tcp.get(at..at + 2)?.try_into().ok()?))
        };
        let data_offset = usize::from(*tcp.get(12)? >> 4) * 4;
        if data_offset < 20 {
            return None;
        }
        Some(TcpSegment {
            src: SocketAddrV4::new(src_ip, port(0)?),
            dst: SocketAddrV4::new(dst_ip, port(2)?),
            seq: u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?),
            flags: *tcp.get(13)?,
            payload: tcp.get(data_offset..)?.to_vec(),
        })
    }
}

/// One direction (`src` to `dst`) of a TCP connection: its payload bytes in sequence order, each
/// byte once (a retransmission adds only what was not seen yet), and the number of holes (bytes
/// the capture missed; what follows a hole is appended anyway).
pub fn tcp_stream(
    segments: &[TcpSegment],
    src: SocketAddrV4,
    dst: SocketAddrV4,
) -> (Vec<u8>, usize) {
    let dir: Vec<&TcpSegment> = segments
        .iter()
        .filter(|s| s.src == src && s.dst == dst)
        .collect();
    // Sequence numbers relative to the first data byte: the sequence number + 1 of the last SYN
    // before the first data (an earlier attempt on the same ports had its own), else the first
    // segment's.
    let Some(base) = dir
        .iter()
        .take_while(|s| s.payload.is_empty())
        .filter(|s| s.flags & TcpSegment::SYN != 0)
        .last()
        .map(|s| s.seq.wrapping_add(1))
        .or_else(|| dir.first().map(|s| s.seq))
    else {
        return (Vec::new(), 0);
    };
    let mut data: Vec<(u32, &[u8])> = dir
        .iter()
        .filter(|s| !s.payload.is_empty())
        .map(|s| (s.seq.wrapping_sub(base), s.payload.as_slice()))
        .collect();
    data.sort_by_key(|(offset, _)| *offset);
    let mut out = Vec::new();
    let mut holes = 0;
    for (offset, payload) in data {
        let offset = offset as usize;
        let end = offset + payload.len();
        if end <= out.len() {
            continue; // all of it seen already
        }
        if offset > out.len() {
            holes += 1;
            out.extend_from_slice(payload);
        } else {
            out.extend_from_slice(&payload[out.len() - offset..]);
        }
    }
    (out, holes)
}

/// The width of a [`Windows`] window.
pub const WINDOW: usize = 32;

/// Every 32-byte window of some known bytes, to find any of them in other bytes.
pub struct Windows {
    set: HashSet<[u8; WINDOW]>,
}

impl Windows {
    /// Every window of every slice of `known` (windows never span two slices).
    pub fn of(known: &[&[u8]]) -> Windows {
        let set = known
            .iter()
            .flat_map(|k| k.windows(WINDOW))
            .filter_map(|w| <[u8; WINDOW]>::try_from(w).ok())
            .collect();
        Windows { set }
    }

    /// How many distinct windows there are.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// At how many positions of `hay` one of the windows starts.
    pub fn hits(&self, hay: &[u8]) -> usize {
        hay.windows(WINDOW)
            .filter(|w| <[u8; WINDOW]>::try_from(*w).is_ok_and(|w| self.set.contains(&w)))
            .count()
    }
}

/// Whether `needle` occurs in `hay` (an empty needle always does).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, last)
    }

    /// An Ethernet frame holding an IPv4 TCP segment (checksums left zero: nobody checks them).
    fn frame(src: SocketAddrV4, dst: SocketAddrV4, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 20 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]); // DF set: not a fragment
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// A classic pcap file (little-endian, microseconds) of `frames`; `cut` of them recorded with
    /// a longer original length.
    fn pcap(frames: &[Vec<u8>], cut: usize) -> Vec<u8> {
        let mut p = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, 1] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        for (i, f) in frames.iter().enumerate() {
            let orig = f.len() as u32 + u32::from(i < cut);
            for v in [1u32, 2, f.len() as u32, orig] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            p.extend_from_slice(f);
        }
        p
    }

    #[test]
    fn reads_frames_segments_and_one_direction_in_order() {
        let (a, b) = (
            SocketAddrV4::new(ip(10), 4000),
            SocketAddrV4::new(ip(20), 5000),
        );
        let isn = u32::MAX - 2; // the sequence numbers wrap
        let frames = vec![
            frame(a, b, 12345, TcpSegment::SYN, b""), // an earlier attempt, never answered
            frame(a, b, isn, TcpSegment::SYN, b""),
            frame(b, a, 7, TcpSegment::SYN | 0x10, b""),
            frame(a, b, isn.wrapping_add(6), 0x18, b"world"), // out of order
            frame(a, b, isn.wrapping_add(1), 0x18, b"hello"),
            frame(a, b, isn.wrapping_add(1), 0x18, b"hello"), // retransmitted
            frame(a, b, isn.wrapping_add(9), 0x18, b"ld!"),   // overlaps "world"
            frame(b, a, 8, 0x18, b"reply"),
            frame(a, b, isn.wrapping_add(20), 0x18, b"after a hole"),
        ];
        let mut bytes = pcap(&frames, 1);
        bytes.extend_from_slice(&[1, 2, 3]); // a record cut short: ignored
        let p = Pcap::parse(&bytes).unwrap();
        assert_eq!((p.link_type, p.snap_len), (1, 262_144));
        assert_eq!(p.frames, frames);
        assert_eq!(p.truncated, 1);
        let segs = p.tcp_segments();
        assert_eq!(segs.len(), frames.len());
        assert_eq!(segs[3].src, a);
        assert_eq!(segs[3].payload, b"world");
        assert_eq!(
            tcp_stream(&segs, a, b),
            (b"helloworld!after a hole".to_vec(), 1)
        );
        assert_eq!(tcp_stream(&segs, b, a), (b"reply".to_vec(), 0));
        assert_eq!(
            tcp_stream(&segs, a, SocketAddrV4::new(ip(20), 1)),
            (vec![], 0)
        );
    }

    #[test]
    fn big_endian_files_and_non_tcp_frames() {
        let (a, b) = (SocketAddrV4::new(ip(10), 1), SocketAddrV4::new(ip(20), 2));
        let tcp = frame(a, b, 1, 0x18, b"x");
        let mut udp = tcp.clone();
        udp[14 + 9] = 17;
        let mut fragment = tcp.clone();
        fragment[14 + 6] = 0x20; // more fragments
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut p = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0002_0004, 0, 0, 65_535, 1] {
            p.extend_from_slice(&v.to_be_bytes());
        }
        for f in [&tcp, &udp, &fragment, &arp] {
            for v in [1u32, 2, f.len() as u32, f.len() as u32] {
                p.extend_from_slice(&v.to_be_bytes());
            }
            p.extend_from_slice(f);
        }
        let p = Pcap::parse(&p).unwrap();
        assert_eq!((p.frames.len(), p.snap_len, p.truncated), (4, 65_535, 0));
        let segs = p.tcp_segments();
        assert_eq!(segs.len(), 1);
        assert_eq!(segs[0].payload, b"x");
        assert!(Pcap::parse(b"pcapng or junk, not pcap").is_err());
        assert!(Pcap::parse(&[0xd4, 0xc3]).is_err());
    }

    #[test]
    fn windows_find_any_32_bytes_of_the_known_data_and_nothing_else() {
        let known: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
        let w = Windows::of(&[&known]);
        assert_eq!(w.len(), 200 - WINDOW + 1);
        let mut hay = b"noise".to_vec();
        hay.extend_from_slice(&known[50..50 + WINDOW]);
        assert_eq!(w.hits(&hay), 1);
        hay.extend_from_slice(&known[100..100 + WINDOW + 2]);
        assert_eq!(w.hits(&hay), 4);
        assert_eq!(w.hits(&known[10..10 + WINDOW - 1]), 0);
        let mut flipped = known.clone();
        for b in flipped.iter_mut().step_by(WINDOW - 1) {
            *b ^= 1;
        }
        assert_eq!(w.hits(&flipped), 0);
        assert!(contains(&hay, &known[60..70]));
        assert!(!contains(&hay, b"absent"));
    }
}
