//! Platform sockets: creating UDP and TCP sockets with socket2 and applying the bind options
//! (reuse flags, device) before `bind`, per platform.

use super::*;

/// Creates a non-blocking TCP socket with `options` applied, bound to `local`.
pub(super) fn open_tcp(
    local: SocketAddr,
    options: &BindOptions,
) -> Result<(Socket, SocketAddr), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(io)?;
    if local.is_ipv6() {
        socket.set_only_v6(true).map_err(io)?;
    }
    apply_options(&socket, local, options)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&local.into()).map_err(io)?;
    let bound = socket
        .local_addr()
        .map_err(io)?
        .as_socket()
        .ok_or(IoError::Other(None))?;
    Ok((socket, bound))
}

/// Creates a non-blocking UDP socket with `options` applied, bound to `local`.
pub(super) fn open_udp(
    local: SocketAddr,
    options: &BindOptions,
) -> Result<(mio::net::UdpSocket, SocketAddr), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    let socket =
        Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    if local.is_ipv6() {
        // IPv6 sockets carry IPv6 only, the same on every platform; machines bind IPv4 separately.
        socket.set_only_v6(true).map_err(io)?;
    }
    apply_options(&socket, local, options)?;
    socket.set_nonblocking(true).map_err(io)?;
    socket.bind(&local.into()).map_err(io)?;
    let std_socket = std::net::UdpSocket::from(socket);
    let bound = std_socket.local_addr().map_err(io)?;
    Ok((mio::net::UdpSocket::from_std(std_socket), bound))
}

/// Applies reuse flags and interface binding; must run before `bind`.
pub(super) fn apply_options(
    socket: &Socket,
    local: SocketAddr,
    options: &BindOptions,
) -> Result<(), IoError> {
    let io = |e: io::Error| map_io_error(&e);
    if options.reuse_address {
        socket.set_reuse_address(true).map_err(io)?;
    }
    if options.reuse_port {
        set_reuse_port(socket).map_err(io)?;
    }
    if let Some(device) = &options.device {
        bind_to_device(socket, device, local.is_ipv6()).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                IoError::NoSuchDevice
            } else {
                map_io_error(&e)
            }
        })?;
    }
    Ok(())
}

/// Windows has no `SO_REUSEPORT`; its `SO_REUSEADDR` already lets sockets share a port.
#[cfg(windows)]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// Sets `SO_REUSEPORT`.
#[cfg(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin",
        target_os = "nuttx"
    ))
))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

/// `SO_REUSEPORT` is not available on this platform.
#[cfg(not(any(
    windows,
    all(
        unix,
        not(any(
            target_os = "solaris",
            target_os = "illumos",
            target_os = "cygwin",
            target_os = "nuttx"
        ))
    )
)))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    let _ = socket;
    Err(io::Error::from(io::ErrorKind::Unsupported))
}
