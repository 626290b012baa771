//! Binding a socket to a network interface, per platform.
//!
//! Linux (and Android, Fuchsia) use `SO_BINDTODEVICE` by name, macOS and the other Apple systems
//! `IP_BOUND_IF` / `IPV6_BOUND_IF` by index, Windows `IP_UNICAST_IF` / `IPV6_UNICAST_IF` by index.
//! Elsewhere a device option fails with [`std::io::ErrorKind::Unsupported`].

use std::io;

use p2pd_proto::InterfaceName;
use socket2::Socket;

/// Binds `socket` (of family IPv6 when `ipv6`) to the interface `name`. Must be called before `bind`.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
pub(crate) fn bind_to_device(socket: &Socket, name: &InterfaceName, ipv6: bool) -> io::Result<()> {
    let _ = ipv6;
    socket.bind_device(Some(name.as_str().as_bytes()))
}

/// Binds `socket` (of family IPv6 when `ipv6`) to the interface `name`. Must be called before `bind`.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "watchos",
    target_os = "visionos"
))]
pub(crate) fn bind_to_device(socket: &Socket, name: &InterfaceName, ipv6: bool) -> io::Result<()> {
    let index = interface_index(name)?;
    if ipv6 {
        socket.bind_device_by_index_v6(Some(index))
    } else {
        socket.bind_device_by_index_v4(Some(index))
    }
}

/// The index of interface `name` (`if_nametoindex`), or `ENODEV` if there is none.
#[cfg(any(
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "watchos",
    target_os = "visionos"
))]
#[allow(unsafe_code)]
fn interface_index(name: &InterfaceName) -> io::Result<std::num::NonZeroU32> {
    let cname = std::ffi::CString::new(name.as_str())
        .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; `if_nametoindex`
    // only reads it.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    std::num::NonZeroU32::new(index).ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))
}

/// Binds `socket` (of family IPv6 when `ipv6`) to the interface `name`. Must be called before `bind`.
///
/// Windows only restricts the outgoing interface (`IP_UNICAST_IF`); the name is an adapter's
/// interface name as `if_nametoindex` knows it, or a decimal interface index. An unknown name fails
/// with [`io::ErrorKind::NotFound`], which the runtime reports as `NoSuchDevice`.
#[cfg(windows)]
#[allow(unsafe_code)]
pub(crate) fn bind_to_device(socket: &Socket, name: &InterfaceName, ipv6: bool) -> io::Result<()> {
    use std::os::windows::io::AsRawSocket;
    use windows_sys::Win32::NetworkManagement::IpHelper::if_nametoindex;
    use windows_sys::Win32::Networking::WinSock::{
        setsockopt, IPPROTO_IP, IPPROTO_IPV6, IPV6_UNICAST_IF, IP_UNICAST_IF, SOCKET_ERROR,
    };

    let index = match name.as_str().parse::<u32>() {
        Ok(index) if index != 0 => index,
        _ => {
            let cname = std::ffi::CString::new(name.as_str())
                .map_err(|_| io::Error::from(io::ErrorKind::NotFound))?;
            // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
            let index = unsafe { if_nametoindex(cname.as_ptr().cast()) };
            if index == 0 {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            index
        }
    };
    // IP_UNICAST_IF takes the index in network byte order; IPV6_UNICAST_IF in host byte order.
    let (level, option, value) = if ipv6 {
        (IPPROTO_IPV6, IPV6_UNICAST_IF, index)
    } else {
        (IPPROTO_IP, IP_UNICAST_IF, index.to_be())
    };
    let bytes = value.to_ne_bytes();
    // SAFETY: the socket handle is valid for the duration of the call (borrowed from `socket`), and
    // `bytes` is a 4-byte buffer whose length is passed alongside it.
    let rc = unsafe {
        setsockopt(
            socket.as_raw_socket() as usize,
            level as i32,
            option as i32,
            bytes.as_ptr(),
            bytes.len() as i32,
        )
    };
    if rc == SOCKET_ERROR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Binds `socket` to the interface `name`: not supported on this platform.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "fuchsia",
    target_os = "macos",
    target_os = "ios",
    target_os = "tvos",
    target_os = "watchos",
    target_os = "visionos",
    windows
)))]
pub(crate) fn bind_to_device(socket: &Socket, name: &InterfaceName, ipv6: bool) -> io::Result<()> {
    let _ = (socket, name, ipv6);
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
