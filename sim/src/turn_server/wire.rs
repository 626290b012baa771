//! The server's wire: the encoding of responses and indications (what clients send is framed by
//! each client's [`StreamFramer`](p2pd_proto::stun::StreamFramer)).

use core::net::SocketAddr;

use p2pd_proto::stun::{
    Attribute, Class, ErrorCode, Header, Message, MessageWriter, Method, TransactionId,
};
use p2pd_proto::SocketId;
use p2pd_turn::codec::{error, TurnAttribute, TurnWriter};

use super::bump;
use super::TurnServer;

/// Largest message the server writes.
const OUT_LEN: usize = 1024;

/// The reason phrase of an error code.
fn reason(code: u16) -> &'static str {
    match code {
        error::BAD_REQUEST => "Bad Request",
        error::UNAUTHENTICATED => "Unauthenticated",
        error::FORBIDDEN => "Forbidden",
        error::ALLOCATION_MISMATCH => "Allocation Mismatch",
        error::STALE_NONCE => "Stale Nonce",
        error::WRONG_CREDENTIALS => "Wrong Credentials",
        error::UNSUPPORTED_TRANSPORT_PROTOCOL => "Unsupported Transport Protocol",
        error::PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
        error::CONNECTION_ALREADY_EXISTS => "Connection Already Exists",
        error::CONNECTION_TIMEOUT_OR_FAILURE => "Connection Timeout or Failure",
        error::ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
        error::INSUFFICIENT_CAPACITY => "Insufficient Capacity",
        _ => "Error",
    }
}

/// A message to write.
pub(super) struct Out<'a> {
    pub(super) class: Class,
    pub(super) method: Method,
    pub(super) id: TransactionId,
    /// ERROR-CODE, for an error response.
    pub(super) code: Option<u16>,
    /// TURN attributes.
    pub(super) attrs: &'a [TurnAttribute<'a>],
    /// XOR-MAPPED-ADDRESS.
    pub(super) mapped: Option<SocketAddr>,
    /// REALM and NONCE (a challenge).
    pub(super) realm_nonce: Option<(&'a str, &'a str)>,
    /// MESSAGE-INTEGRITY key.
    pub(super) key: Option<[u8; 16]>,
}

/// Encodes `out`; `None` if it does not fit (not for anything the server builds).
pub(super) fn encode(out: &Out<'_>) -> Option<Vec<u8>> {
    let mut buf = [0u8; OUT_LEN];
    let header = Header::new(out.class, out.method, out.id);
    let mut w = MessageWriter::new(&mut buf, header).ok()?;
    if let Some(code) = out.code {
        w.add(&Attribute::ErrorCode(ErrorCode {
            code,
            reason: reason(code),
        }))
        .ok()?;
    }
    for a in out.attrs {
        w.add_turn(&header, a).ok()?;
    }
    if let Some(m) = out.mapped {
        w.add(&Attribute::XorMappedAddress(m)).ok()?;
    }
    if let Some((realm, nonce)) = out.realm_nonce {
        w.add_turn(&header, &TurnAttribute::Realm(realm)).ok()?;
        w.add_turn(&header, &TurnAttribute::Nonce(nonce.as_bytes()))
            .ok()?;
    }
    if let Some(key) = out.key {
        w.add_message_integrity(&key).ok()?;
    }
    w.add_fingerprint().ok()?;
    let len = w.finish();
    buf.get(..len).map(<[u8]>::to_vec)
}

impl TurnServer {
    /// Queues `out` on `socket`; a connection that cannot take it is closed as a slow consumer.
    pub(super) fn write(&mut self, socket: SocketId, out: &Out<'_>) {
        let Some(bytes) = encode(out) else {
            return;
        };
        if !self.send(socket, &bytes) {
            bump(&mut self.stats.slow_closed);
            self.close_socket(socket);
        }
    }

    /// Answers request `msg` with error `code` (with REALM and a new NONCE if `challenge`, and
    /// MESSAGE-INTEGRITY under `key` if given).
    pub(super) fn respond_error(
        &mut self,
        socket: SocketId,
        msg: &Message<'_>,
        code: u16,
        challenge: bool,
        key: Option<[u8; 16]>,
    ) {
        if code != error::UNAUTHENTICATED && code != error::STALE_NONCE {
            bump(&mut self.stats.errors);
        }
        self.respond_error_to(
            socket,
            msg.method(),
            msg.transaction_id(),
            code,
            challenge,
            key,
        );
    }

    /// [`TurnServer::respond_error`] for a request known by its method and transaction id.
    pub(super) fn respond_error_to(
        &mut self,
        socket: SocketId,
        method: Method,
        id: TransactionId,
        code: u16,
        challenge: bool,
        key: Option<[u8; 16]>,
    ) {
        let nonce = challenge.then(|| self.new_nonce());
        let realm = self.config.realm.clone();
        let out = Out {
            class: Class::Error,
            method,
            id,
            code: Some(code),
            attrs: &[],
            mapped: None,
            realm_nonce: nonce.as_deref().map(|n| (realm.as_str(), n)),
            key,
        };
        self.write(socket, &out);
    }

    /// Answers request `msg` with success, `attrs` and MESSAGE-INTEGRITY under `key`.
    pub(super) fn respond_ok(
        &mut self,
        socket: SocketId,
        method: Method,
        id: TransactionId,
        attrs: &[TurnAttribute<'_>],
        mapped: Option<SocketAddr>,
        key: Option<[u8; 16]>,
    ) {
        let out = Out {
            class: Class::Success,
            method,
            id,
            code: None,
            attrs,
            mapped,
            realm_nonce: None,
            key,
        };
        self.write(socket, &out);
    }
}
