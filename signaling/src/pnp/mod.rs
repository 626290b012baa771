//! The PNP name registry: names mapped to owner-signed values, with expiry and increasing
//! versions, served over UDP and length-prefixed TCP by a sans-IO server machine ([`PnpServer`])
//! and used through a sans-IO client machine ([`PnpClient`]).
//!
//! This is our own protocol (version 1), not wire-compatible with p2pd's PNP. It fixes p2pd's
//! defects: a version byte and an opcode instead of guessing the operation from which fields are
//! empty; a length prefix on TCP; typed error replies instead of silence; a server-time window
//! and a replay cache instead of a client-chosen counter; records signed by their owner so that a
//! lookup is verifiable without trusting the server; no amplification over UDP.
//!
//! # Transport
//!
//! Every request is a sealed [`envelope`](crate::envelope) from the client's identity to the
//! server's public key; every reply is a sealed envelope from the server to the request's sender.
//! The envelope gives confidentiality, sender authentication, a timestamp checked against the
//! server's clock (`max_age_ms` / `max_future_ms`) and a nonce checked against a bounded replay
//! cache. Envelopes that do not open (bad signature, stale, replayed, not addressed to the
//! server) are counted and dropped without a reply: there is no authenticated sender to answer.
//!
//! - **UDP**: one envelope per datagram, one reply datagram per request. The client retransmits
//!   the very same bytes with exponential back-off; the server answers a retransmission from a
//!   small reply cache (keyed by sender key and envelope nonce, checked against a hash of the
//!   whole request) with the very same reply, not with a replay error.
//! - **TCP**: frames of `length:u16 (big-endian) ‖ envelope`, one reply frame per request frame.
//!   The client opens one connection per request, sends one frame, reads one frame and closes.
//!   The server accepts any number of frames per connection (split anywhere, several per chunk),
//!   closes a connection on a zero or oversize length, after an idle timeout, and when a request
//!   is not whole and answered within a message timeout of its first byte. One source (IPv4
//!   address, IPv6 /64) holds a bounded number of connections, and a newcomer arriving when all
//!   are open replaces the one that has done least ([`PnpServerConfig::tcp_limits`]), so slow
//!   or idle clients from one source cannot lock others out.
//!
//! # Payloads (inside the envelope), wire version 1
//!
//! All integers are big-endian. Every payload starts with `version:u8 = 1` and `opcode:u8`.
//!
//! ```text
//! request  = version opcode body padding
//!   0x01 REGISTER  body = record
//!   0x02 LOOKUP    body = name_len:u8 name
//!   0x03 DELETE    body = name_len:u8 name version:u64
//!   padding  = any number of zero bytes (anything else is Malformed)
//!
//! reply    = version opcode request_nonce:[16] body      ; request_nonce = the request
//!                                                         ; envelope's nonce; no padding
//!   0x81 REGISTERED body = version:u64
//!   0x82 FOUND      body = record
//!   0x83 DELETED    body = version:u64
//!   0xff ERROR      body = code:u8 detail:u64
//!
//! record   = name_len:u8 name value_len:u16 value owner:[33] version:u64 expires_ms:u64
//!            signature:[64]
//! signature: ECDSA secp256k1 / SHA-256, low-S, by `owner`, over
//!            "p2pd-pnp/v1/record" ‖ record without the signature
//! ```
//!
//! Error codes ([`ErrorCode`]; `detail` after the colon): 1 not found, 2 not owner, 3 stale
//! version: stored version, 4 quota exceeded: names per source, 5 rate limited: ms to wait, 6 bad
//! signature, 7 malformed, 8 too large: the limit, 9 server busy, 10 invalid name, 11 invalid
//! expiry: latest accepted expiry, 12 padding required: request length needed, 13 unsupported
//! version: the server's version.
//!
//! Limits: names are 1..=[`MAX_NAME_LEN`] (64) bytes of `a-z 0-9 - _ .` starting with a letter or
//! digit (never normalised); values are at most [`MAX_VALUE_LEN`] (640) bytes; so every request
//! and reply envelope is at most [`MAX_MESSAGE_LEN`] (1114) bytes, below [`MAX_REPLY_LEN`] (1200).
//!
//! # Rules
//!
//! - **Ownership**: a name belongs to the key that first registered it (while it is live). A
//!   record's owner must be the request's sender. Others get `NotOwner`.
//! - **Versions**: an update or a delete needs a version greater than the stored one
//!   (`StaleVersion`, detail = stored version); the same version with an identical record is an
//!   idempotent success. After a delete (or expiry) the name is free again.
//! - **Expiry**: `expires_ms` must be in the future and at most `max_lifetime` (+ clock skew)
//!   ahead, both bounded by the configuration checks ([`MAX_RECORD_LIFETIME`],
//!   [`MAX_CLOCK_SKEW_MS`]); any other value, up to `u64::MAX`, gets `InvalidExpiry`. Expired
//!   records are treated as absent at once, count against no capacity or quota, and are pruned
//!   from the store in bounded steps ([`PnpServerConfig::prune_batch`]), using the caller's
//!   clock ([`PnpServerConfig::unix_epoch_ms`]).
//! - **Quotas**: names per source (IPv4 address or IPv6 /64; an update from another source moves
//!   the name there) and requests per source per window, in a table of bounded size. A source
//!   over its rate gets one `RateLimited` reply per window and is then dropped silently. A full
//!   rate table never refuses a new source (a spoofed-source flood would otherwise lock new
//!   clients out): it forgets a one-shot or stale entry instead.
//! - **Anti-amplification**: over UDP a reply is never larger than the request that caused it.
//!   The client pads lookups to [`UDP_LOOKUP_PAYLOAD_LEN`] and other requests to
//!   [`MIN_UDP_REQUEST_PAYLOAD`] so that every reply fits; if one would not, the server sends a
//!   `PaddingRequired` error if that fits, and nothing otherwise.
//!
//! # Clocks
//!
//! Machines read no clock. Both machines take `now` as [`p2pd_proto::Instant`] and learn Unix
//! time from their config's `unix_epoch_ms`, the Unix time in milliseconds at
//! `Instant::ZERO`: `unix_ms = unix_epoch_ms + (now - Instant::ZERO)`.
//!
//! # Example
//!
//! ```
//! use p2pd_signaling::pnp::{Name, PnpClient, PnpClientConfig, PnpClientEvent, PnpTransport};
//! use p2pd_signaling::pnp::{MemoryStore, PnpServer, PnpServerConfig};
//! use p2pd_signaling::Identity;
//! use p2pd_proto::{Instant, Machine, SocketOp, SocketOutcome, TRANSMIT_BUFFER_LEN};
//! use std::time::Duration;
//!
//! let (server_addr, client_addr) = ("192.0.2.1:5300".parse().unwrap(), "198.51.100.2:4000".parse().unwrap());
//! let epoch = 1_700_000_000_000;
//! let server_id = Identity::from_secret_bytes(&[9; 32]).unwrap();
//! let key = server_id.public_key();
//! let config = PnpServerConfig::new(server_addr, server_addr, epoch);
//! let mut server = PnpServer::new(config, server_id, MemoryStore::new(100), 1).unwrap();
//! let config = PnpClientConfig::new(server_addr, key, PnpTransport::Udp, epoch);
//! let mut client = PnpClient::new(config, Identity::from_secret_bytes(&[3; 32]).unwrap(), 2);
//!
//! let now = Instant::from_millis(1);
//! let id = client
//!     .register(now, Name::new("alice").unwrap(), b"hello".to_vec(), 1, Duration::from_secs(600))
//!     .unwrap();
//! // Answer the bind intents as a runtime would.
//! while let Some(SocketOp::Bind { socket, local, .. }) = server.poll_socket_op() {
//!     server.handle_socket_result(now, socket, SocketOutcome::Bound { local });
//! }
//! while let Some(SocketOp::Bind { socket, local, .. }) = client.poll_socket_op() {
//!     client.handle_socket_result(now, socket, SocketOutcome::Bound { local });
//! }
//! let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
//! let t = client.poll_transmit(&mut buf).unwrap();
//! let _ = server.handle_datagram(now, t.socket, client_addr, &buf[..t.len]);
//! let r = server.poll_transmit(&mut buf).unwrap();
//! assert!(r.len <= t.len); // never larger than the request
//! let _ = client.handle_datagram(now, t.socket, server_addr, &buf[..r.len]);
//! assert!(matches!(client.poll_event(), Some(PnpClientEvent::Registered { id: got, version: 1, .. }) if got == id));
//! ```

mod client;
mod handler;
mod limits;
mod record;
mod server;
mod store;
mod wire;

#[cfg(test)]
mod tests;

pub use client::{
    PnpClient, PnpClientConfig, PnpClientError, PnpClientEvent, PnpClientStats, PnpFailure,
    PnpServerId, PnpTransport, RequestId, CLIENT_UDP_SOCKET,
};
pub use record::{
    Name, NameError, Record, RecordError, MAX_NAME_LEN, MAX_RECORD_LEN, MAX_VALUE_LEN,
    RECORD_FIXED_LEN, RECORD_SIGNING_DOMAIN,
};
pub use server::{
    PnpConfigError, PnpServer, PnpServerConfig, PnpServerEvent, PnpServerStats, MAX_CLOCK_SKEW_MS,
    MAX_CONNECTIONS, MAX_RECORD_LIFETIME, TCP_LISTENER, UDP_SOCKET,
};
pub use store::{MemoryStore, NameStore, SourceKey, StoreError, StoredName, RECLAIM_PER_PUT};
pub use wire::{
    frame, ErrorCode, Reply, ReplyBody, Request, WireError, ACK_REPLY_PAYLOAD_LEN,
    ERROR_REPLY_PAYLOAD_LEN, FRAME_PREFIX_LEN, MAX_MESSAGE_LEN, MAX_PAYLOAD_LEN, MAX_REPLY_LEN,
    MIN_UDP_REQUEST_PAYLOAD, REPLY_HEADER_LEN, UDP_LOOKUP_PAYLOAD_LEN, WIRE_VERSION,
};
