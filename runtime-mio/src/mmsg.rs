//! Batched UDP I/O: `recvmmsg` / `sendmmsg` on Linux, one datagram per call elsewhere.
//!
//! Every buffer is allocated once, with the runtime: receiving and sending allocate nothing (the
//! send arena grows only if a transmit is larger than any before it).

use std::io;
use std::net::SocketAddr;

use socket2::SockAddr;

use crate::runtime::RECV_BUFFER_LEN;

/// Datagrams one receive call may return.
#[cfg(target_os = "linux")]
pub(crate) const RECV_BATCH: usize = 32;
/// Datagrams one receive call may return (one: no `recvmmsg` on this platform).
#[cfg(not(target_os = "linux"))]
pub(crate) const RECV_BATCH: usize = 1;

/// Datagrams collected before they are sent in one call.
pub(crate) const SEND_BATCH: usize = 32;

/// Distance between two receive buffers: the largest UDP payload, plus a few cache lines so the
/// buffers' first bytes (all a small datagram touches) do not all fall in the same cache set.
const RECV_STRIDE: usize = RECV_BUFFER_LEN + 256;

/// Initial capacity of the send arena: room for a batch of typical datagrams.
const SEND_ARENA: usize = SEND_BATCH * 2048;

/// Datagrams read from one socket by one call, handed out one by one.
pub(crate) struct RecvBatch {
    /// `RECV_BATCH` buffers of `RECV_STRIDE` bytes (the first `RECV_BUFFER_LEN` of each used).
    bufs: Box<[u8]>,
    /// Sender addresses as the kernel wrote them.
    #[cfg(target_os = "linux")]
    names: Box<[libc::sockaddr_storage]>,
    /// Per datagram read: its sender (`None`: an address family that is not IP) and length.
    meta: Box<[(Option<SocketAddr>, usize)]>,
    /// Datagrams read by the last call.
    count: usize,
    /// The next datagram to hand out.
    next: usize,
}

impl RecvBatch {
    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0u8; RECV_BATCH.saturating_mul(RECV_STRIDE)].into_boxed_slice(),
            #[cfg(target_os = "linux")]
            names: vec![sys::zeroed_storage(); RECV_BATCH].into_boxed_slice(),
            meta: vec![(None, 0); RECV_BATCH].into_boxed_slice(),
            count: 0,
            next: 0,
        }
    }

    /// Whether datagrams read earlier are still waiting to be handed out.
    pub(crate) fn has_pending(&self) -> bool {
        self.next < self.count
    }

    /// Forgets the datagrams not handed out yet.
    pub(crate) fn clear(&mut self) {
        self.count = 0;
        self.next = 0;
    }

    /// The next datagram read earlier: its sender (`None` for a non-IP address) and payload.
    pub(crate) fn pop(&mut self) -> Option<(Option<SocketAddr>, &[u8])> {
        if self.next >= self.count {
            return None;
        }
        let i = self.next;
        self.next = i.saturating_add(1);
        let (from, len) = *self.meta.get(i)?;
        let start = i.saturating_mul(RECV_STRIDE);
        let data = self.bufs.get(start..start.saturating_add(len))?;
        Some((from, data))
    }

    /// Reads up to [`RECV_BATCH`] datagrams from `sock` without blocking, replacing any not handed
    /// out yet. Returns how many were read (at least one); `WouldBlock` when there are none.
    #[cfg(target_os = "linux")]
    pub(crate) fn recv(&mut self, sock: &mio::net::UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;

        self.clear();
        let mut lens = [(0usize, 0 as libc::socklen_t); RECV_BATCH];
        let n = sys::recvmmsg(sock.as_raw_fd(), &mut self.bufs, &mut self.names, &mut lens)?;
        let got = lens.iter().zip(self.names.iter()).zip(self.meta.iter_mut());
        for (((len, name_len), name), meta) in got.take(n) {
            *meta = (
                sys::to_socket_addr(name, *name_len),
                (*len).min(RECV_BUFFER_LEN),
            );
        }
        self.count = n;
        Ok(n)
    }

    /// Reads one datagram from `sock` without blocking (`WouldBlock` when there is none).
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn recv(&mut self, sock: &mio::net::UdpSocket) -> io::Result<usize> {
        self.clear();
        let buf = self
            .bufs
            .get_mut(..RECV_BUFFER_LEN)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let (len, from) = sock.recv_from(buf)?;
        if let Some(meta) = self.meta.first_mut() {
            *meta = (Some(from), len);
            self.count = 1;
        }
        Ok(self.count)
    }
}

/// One datagram waiting in a [`SendBatch`].
struct Outgoing {
    /// Where its payload starts in the arena.
    start: usize,
    /// Payload length.
    len: usize,
    /// The destination, as given.
    destination: SocketAddr,
    /// The destination, as the OS takes it.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    addr: SockAddr,
    /// Bytes the kernel took, once sent.
    sent: usize,
}

/// Datagrams for one socket, sent together.
pub(crate) struct SendBatch {
    /// The payloads, back to back.
    arena: Vec<u8>,
    /// At most [`SEND_BATCH`] datagrams, in the order they were pushed.
    msgs: Vec<Outgoing>,
}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        SendBatch {
            arena: Vec::with_capacity(SEND_ARENA),
            msgs: Vec::with_capacity(SEND_BATCH),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.msgs.len() >= SEND_BATCH
    }

    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.msgs.clear();
    }

    /// Queues a datagram (the caller keeps the batch within [`SEND_BATCH`]).
    pub(crate) fn push(&mut self, payload: &[u8], destination: SocketAddr) {
        let start = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.msgs.push(Outgoing {
            start,
            len: payload.len(),
            destination,
            addr: SockAddr::from(destination),
            sent: 0,
        });
    }

    /// Datagram `i`'s destination.
    pub(crate) fn destination(&self, i: usize) -> Option<SocketAddr> {
        self.msgs.get(i).map(|m| m.destination)
    }

    /// Bytes the kernel took for datagram `i` (after a successful [`SendBatch::send`]).
    pub(crate) fn sent_len(&self, i: usize) -> usize {
        self.msgs.get(i).map_or(0, |m| m.sent)
    }

    /// Sends datagrams `from..` on `sock` in one call. Returns how many went out (at least one:
    /// the first ones, in order), or the error of datagram `from`, which was not sent.
    #[cfg(target_os = "linux")]
    pub(crate) fn send(&mut self, sock: &mio::net::UdpSocket, from: usize) -> io::Result<usize> {
        use std::os::fd::AsRawFd;

        let msgs = self.msgs.get_mut(from..).unwrap_or_default();
        let n = sys::sendmmsg(sock.as_raw_fd(), &self.arena, msgs)?;
        if n == 0 {
            // Not expected for a non-empty batch; fail the first so the caller makes progress.
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        Ok(n)
    }

    /// Sends datagram `from` on `sock`. Returns 1, or its error.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn send(&mut self, sock: &mio::net::UdpSocket, from: usize) -> io::Result<usize> {
        let Some(m) = self.msgs.get_mut(from) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        let payload = self
            .arena
            .get(m.start..m.start.saturating_add(m.len))
            .unwrap_or_default();
        m.sent = sock.send_to(payload, m.destination)?;
        Ok(1)
    }
}

/// The system calls, the only unsafe code here.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::RawFd;
    use std::ptr;

    use super::{Outgoing, RECV_BATCH, RECV_BUFFER_LEN, RECV_STRIDE, SEND_BATCH};

    /// An all-zero `sockaddr_storage`.
    pub(super) fn zeroed_storage() -> libc::sockaddr_storage {
        // SAFETY: `sockaddr_storage` is a plain C struct of integers; all zeros is a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// An all-zero `mmsghdr` (null pointers, zero lengths).
    fn zeroed_mmsghdr() -> libc::mmsghdr {
        // SAFETY: `mmsghdr` is a plain C struct of integers and raw pointers; all zeros (null
        // pointers, zero lengths) is a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// `recvmmsg` into `bufs` (`RECV_BATCH` buffers `RECV_STRIDE` apart, `RECV_BUFFER_LEN` bytes
    /// each) and `names`, without blocking; retried on `EINTR`. Fills `lens` with each datagram's
    /// (payload, address) length and returns how many were read.
    pub(super) fn recvmmsg(
        fd: RawFd,
        bufs: &mut [u8],
        names: &mut [libc::sockaddr_storage],
        lens: &mut [(usize, libc::socklen_t); RECV_BATCH],
    ) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; RECV_BATCH];
        let mut hdrs = [zeroed_mmsghdr(); RECV_BATCH];
        let mut vlen = 0usize;
        let slots = bufs.chunks_exact_mut(RECV_STRIDE).zip(names.iter_mut());
        for (((buf, name), iov), hdr) in slots.zip(iov.iter_mut()).zip(hdrs.iter_mut()) {
            let buf = buf.get_mut(..RECV_BUFFER_LEN).unwrap_or_default();
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            hdr.msg_hdr.msg_name = ptr::from_mut(name).cast();
            hdr.msg_hdr.msg_namelen = socklen_of::<libc::sockaddr_storage>();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            vlen = vlen.saturating_add(1);
        }
        let vlen = libc::c_uint::try_from(vlen).unwrap_or(0);
        let n = loop {
            // SAFETY: `hdrs` holds `vlen` headers, each naming one `sockaddr_storage` of
            // `msg_namelen` bytes and one iovec of `iov_len` bytes, all exclusively borrowed (from
            // `bufs`, `names`, `iov`) and alive until the call returns; the kernel writes only
            // within those lengths. A null timeout is allowed.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            match usize::try_from(rc) {
                Ok(n) => break n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        };
        for (hdr, len) in hdrs.iter().zip(lens.iter_mut()).take(n) {
            *len = (
                usize::try_from(hdr.msg_len).unwrap_or(0),
                hdr.msg_hdr.msg_namelen,
            );
        }
        Ok(n)
    }

    /// `sendmmsg` of `msgs` (payloads in `arena`), without blocking. Records the bytes sent in each
    /// datagram sent and returns how many were sent; the error if the first one failed.
    pub(super) fn sendmmsg(fd: RawFd, arena: &[u8], msgs: &mut [Outgoing]) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; SEND_BATCH];
        let mut hdrs = [zeroed_mmsghdr(); SEND_BATCH];
        let mut vlen = 0usize;
        for ((m, iov), hdr) in msgs.iter().zip(iov.iter_mut()).zip(hdrs.iter_mut()) {
            let payload = arena
                .get(m.start..m.start.saturating_add(m.len))
                .unwrap_or_default();
            // The kernel only reads through these pointers (`sendmmsg` takes `*mut` for its
            // headers, whose `msg_len` it writes, not for the payloads or addresses).
            iov.iov_base = payload.as_ptr().cast_mut().cast();
            iov.iov_len = payload.len();
            hdr.msg_hdr.msg_name = m.addr.as_ptr().cast_mut().cast();
            hdr.msg_hdr.msg_namelen = m.addr.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            vlen = vlen.saturating_add(1);
        }
        if vlen == 0 {
            return Ok(0);
        }
        let vlen_c = libc::c_uint::try_from(vlen).unwrap_or(0);
        let n = loop {
            // SAFETY: `hdrs` holds `vlen_c` headers, each naming one socket address of
            // `msg_namelen` bytes (owned by `msgs`) and one iovec of `iov_len` bytes within
            // `arena`, all borrowed and alive until the call returns; the kernel only reads them
            // and writes each header's `msg_len`.
            let rc =
                unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), vlen_c, libc::MSG_DONTWAIT as _) };
            match usize::try_from(rc) {
                Ok(n) => break n.min(vlen),
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        };
        for (hdr, m) in hdrs.iter().zip(msgs.iter_mut()).take(n) {
            m.sent = usize::try_from(hdr.msg_len).unwrap_or(0);
        }
        Ok(n)
    }

    /// The size of `T` as a `socklen_t`.
    fn socklen_of<T>() -> libc::socklen_t {
        libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
    }

    /// The IP socket address in `storage` (`len` bytes written by the kernel); `None` for other
    /// families or a short address.
    pub(super) fn to_socket_addr(
        storage: &libc::sockaddr_storage,
        len: libc::socklen_t,
    ) -> Option<SocketAddr> {
        match libc::c_int::from(storage.ss_family) {
            libc::AF_INET if len >= socklen_of::<libc::sockaddr_in>() => {
                // SAFETY: the family is AF_INET and the kernel wrote a whole `sockaddr_in`;
                // `sockaddr_storage` is larger than it and aligned for every socket address type.
                let sin = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(
                    ip,
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len >= socklen_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for AF_INET6 and `sockaddr_in6`.
                let sin6 = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}
