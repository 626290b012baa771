//! Mapping `std::io::Error` to the machine contract's [`IoError`].

use std::io;

use p2pd_proto::IoError;

/// Reduces an I/O error to what a protocol machine can act on.
///
/// Raw OS error codes are checked first (so `ENODEV`, `EMSGSIZE` and `ENOBUFS`, which have no stable
/// [`io::ErrorKind`], are recognised), then the error kind. Anything else becomes
/// [`IoError::Other`] carrying the raw OS code, if there is one.
///
/// ```
/// use p2pd_mio::map_io_error;
/// use p2pd_proto::IoError;
/// let e = std::io::Error::from(std::io::ErrorKind::AddrInUse);
/// assert_eq!(map_io_error(&e), IoError::AddrInUse);
/// ```
pub fn map_io_error(e: &io::Error) -> IoError {
    if let Some(mapped) = e.raw_os_error().and_then(map_raw_os_error) {
        return mapped;
    }
    match e.kind() {
        io::ErrorKind::AddrInUse => IoError::AddrInUse,
        io::ErrorKind::AddrNotAvailable => IoError::AddrNotAvailable,
        io::ErrorKind::PermissionDenied => IoError::PermissionDenied,
        io::ErrorKind::ConnectionRefused => IoError::ConnectionRefused,
        io::ErrorKind::ConnectionReset => IoError::ConnectionReset,
        io::ErrorKind::HostUnreachable => IoError::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => IoError::NetworkUnreachable,
        io::ErrorKind::TimedOut => IoError::TimedOut,
        io::ErrorKind::WouldBlock => IoError::WouldBlock,
        io::ErrorKind::NotConnected => IoError::NotConnected,
        io::ErrorKind::BrokenPipe => IoError::BrokenPipe,
        _ => IoError::Other(e.raw_os_error()),
    }
}

/// Maps a raw OS error code (`errno` on Unix, a WinSock code on Windows) when it is one the contract
/// names.
#[cfg(unix)]
fn map_raw_os_error(code: i32) -> Option<IoError> {
    let mapped = match code {
        libc::EADDRINUSE => IoError::AddrInUse,
        libc::EADDRNOTAVAIL => IoError::AddrNotAvailable,
        libc::EACCES | libc::EPERM => IoError::PermissionDenied,
        libc::ECONNREFUSED => IoError::ConnectionRefused,
        libc::ECONNRESET => IoError::ConnectionReset,
        libc::EHOSTUNREACH => IoError::HostUnreachable,
        libc::ENETUNREACH => IoError::NetworkUnreachable,
        libc::ETIMEDOUT => IoError::TimedOut,
        libc::EMSGSIZE => IoError::MessageTooLong,
        // ENOBUFS: the interface queue is full (Linux, BSD); the datagram was not sent.
        libc::EAGAIN | libc::ENOBUFS => IoError::WouldBlock,
        libc::ENODEV | libc::ENXIO => IoError::NoSuchDevice,
        libc::ENOTCONN => IoError::NotConnected,
        libc::EPIPE => IoError::BrokenPipe,
        _ => return None,
    };
    Some(mapped)
}

/// Maps a raw OS error code (`errno` on Unix, a WinSock code on Windows) when it is one the contract
/// names.
#[cfg(windows)]
fn map_raw_os_error(code: i32) -> Option<IoError> {
    // WinSock error codes (winerror.h); stable since Windows Sockets 1.1.
    let mapped = match code {
        10048 => IoError::AddrInUse,          // WSAEADDRINUSE
        10049 => IoError::AddrNotAvailable,   // WSAEADDRNOTAVAIL
        10013 => IoError::PermissionDenied,   // WSAEACCES
        10061 => IoError::ConnectionRefused,  // WSAECONNREFUSED
        10054 => IoError::ConnectionReset,    // WSAECONNRESET (also ICMP port unreachable on UDP)
        10065 => IoError::HostUnreachable,    // WSAEHOSTUNREACH
        10051 => IoError::NetworkUnreachable, // WSAENETUNREACH
        10060 => IoError::TimedOut,           // WSAETIMEDOUT
        10040 => IoError::MessageTooLong,     // WSAEMSGSIZE
        10035 | 10055 => IoError::WouldBlock, // WSAEWOULDBLOCK, WSAENOBUFS
        10057 => IoError::NotConnected,       // WSAENOTCONN
        10058 => IoError::BrokenPipe,         // WSAESHUTDOWN (a send after shutdown(SD_SEND))
        _ => return None,
    };
    Some(mapped)
}

/// Maps a raw OS error code when it is one the contract names.
#[cfg(not(any(unix, windows)))]
fn map_raw_os_error(_code: i32) -> Option<IoError> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map() {
        let cases = [
            (io::ErrorKind::AddrInUse, IoError::AddrInUse),
            (io::ErrorKind::AddrNotAvailable, IoError::AddrNotAvailable),
            (io::ErrorKind::PermissionDenied, IoError::PermissionDenied),
            (io::ErrorKind::ConnectionRefused, IoError::ConnectionRefused),
            (io::ErrorKind::WouldBlock, IoError::WouldBlock),
            (io::ErrorKind::NotConnected, IoError::NotConnected),
            (io::ErrorKind::BrokenPipe, IoError::BrokenPipe),
            (io::ErrorKind::InvalidInput, IoError::Other(None)),
        ];
        for (kind, want) in cases {
            assert_eq!(map_io_error(&io::Error::from(kind)), want, "{kind:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn raw_codes_map() {
        let cases = [
            (libc::ENODEV, IoError::NoSuchDevice),
            (libc::EADDRINUSE, IoError::AddrInUse),
            (libc::EACCES, IoError::PermissionDenied),
            (libc::EPERM, IoError::PermissionDenied),
            (libc::EMSGSIZE, IoError::MessageTooLong),
            (libc::ECONNREFUSED, IoError::ConnectionRefused),
            (libc::ENOTCONN, IoError::NotConnected),
            (libc::EPIPE, IoError::BrokenPipe),
            (libc::EINVAL, IoError::Other(Some(libc::EINVAL))),
        ];
        for (code, want) in cases {
            assert_eq!(
                map_io_error(&io::Error::from_raw_os_error(code)),
                want,
                "{code}"
            );
        }
    }
}
