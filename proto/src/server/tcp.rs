//! STUN over TCP for the server (RFC 5389 §7.2.2): the listener and connection slots are an
//! [`AcceptPool`](crate::accept::AcceptPool); each slot reassembles messages framed by the STUN
//! header's length field in a [`StreamFramer`].
//!
//! Each slot's buffer holds [`MAX_TCP_MESSAGE_LEN`] bytes and is allocated when the server is
//! built: serving TCP requests allocates nothing either.

use crate::accept::SlotData;
use crate::machine::SocketId;
use crate::stun::StreamFramer;

/// The socket id of the server's TCP listener.
pub const TCP_LISTENER: SocketId = SocketId(4);

/// The first socket id of accepted TCP connections: slot `i` is `SocketId(TCP_CONNECTION_BASE + i)`.
pub const TCP_CONNECTION_BASE: u32 = 0x100;

/// The most TCP connections a server may be configured to hold.
pub const MAX_TCP_CONNECTIONS: usize = 4096;

/// The longest STUN message accepted on a TCP connection; a longer one closes the connection.
pub const MAX_TCP_MESSAGE_LEN: usize = 1500;

/// A connection slot's reassembly buffer is a [`StreamFramer`] of [`MAX_TCP_MESSAGE_LEN`] bytes:
/// the slot forgets the previous connection's bytes when it opens and when it closes.
impl SlotData for StreamFramer {
    fn reset(&mut self) {
        self.clear();
    }
}
