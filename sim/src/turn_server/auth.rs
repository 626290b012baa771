//! Long-term authentication (RFC 8489 §9.2): stateless nonces, password lookup (static users and
//! TURN REST usernames) and the check of a request's credentials.

use p2pd_proto::stun::{AttrKind, Attribute, Message};
use p2pd_proto::SocketId;
use p2pd_turn::codec::{self, attr, error, long_term_key, rest_password, TurnAttribute};

use super::{bump, TurnServer};

/// A request whose credentials verified.
#[derive(Clone, Debug)]
pub(super) struct Authed {
    /// Its USERNAME.
    pub(super) username: String,
    /// MD5(username:realm:password): the MESSAGE-INTEGRITY key of the answer.
    pub(super) key: [u8; 16],
}

/// A nonce is 16 hex digits of its issue time (ms) and 32 of its tag.
const NONCE_LEN: usize = 48;

impl TurnServer {
    /// A fresh nonce, issued now.
    pub(super) fn new_nonce(&self) -> String {
        let issued = self.now.as_nanos() / 1_000_000;
        let mut s = format!("{issued:016x}");
        for b in self.nonce_tag(issued) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    fn nonce_tag(&self, issued_ms: u64) -> [u8; 16] {
        long_term_key(&self.nonce_secret, &issued_ms.to_be_bytes(), b"nonce")
    }

    /// Whether `nonce` is one of ours and younger than the nonce lifetime.
    fn nonce_fresh(&self, nonce: &[u8]) -> bool {
        if nonce.len() != NONCE_LEN {
            return false;
        }
        let Ok(text) = core::str::from_utf8(nonce) else {
            return false;
        };
        let (Some(time), Some(tag)) = (text.get(..16), text.get(16..)) else {
            return false;
        };
        let Ok(issued) = u64::from_str_radix(time, 16) else {
            return false;
        };
        let mut expected = String::with_capacity(32);
        for b in self.nonce_tag(issued) {
            expected.push_str(&format!("{b:02x}"));
        }
        if expected != tag {
            return false;
        }
        let now_ms = self.now.as_nanos() / 1_000_000;
        let age = now_ms.saturating_sub(issued);
        issued <= now_ms && u128::from(age) < self.config.nonce_lifetime.as_millis()
    }

    /// The password of `username`, if it is a known user or a REST username that has not expired.
    fn password(&self, username: &str) -> Option<String> {
        if let Some((_, p)) = self.config.users.iter().find(|(u, _)| u == username) {
            return Some(p.clone());
        }
        let secret = self.config.rest_secret.as_ref()?;
        let (expiry, _) = username.split_once(':')?;
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let expiry: u64 = expiry.parse().ok()?;
        let unix_now = self
            .config
            .unix_now
            .saturating_add(self.now.as_nanos() / 1_000_000_000);
        if expiry < unix_now {
            return None;
        }
        Some(rest_password(secret, username))
    }

    /// Checks `msg`'s long-term credentials; on failure answers it (401, 400 or 438) on `socket`
    /// and returns `None`.
    pub(super) fn authenticate(&mut self, socket: SocketId, msg: &Message<'_>) -> Option<Authed> {
        let has_mi = msg.get(AttrKind::MessageIntegrity).is_some();
        if !has_mi {
            bump(&mut self.stats.challenges);
            self.respond_error(socket, msg, error::UNAUTHENTICATED, true, None);
            return None;
        }
        let username = match msg.get(AttrKind::Username) {
            Some(Attribute::Username(u)) => core::str::from_utf8(u).ok(),
            _ => None,
        };
        let realm = matches!(
            codec::find(msg, attr::REALM),
            Ok(Some(TurnAttribute::Realm(_)))
        );
        let nonce = match codec::find(msg, attr::NONCE) {
            Ok(Some(TurnAttribute::Nonce(n))) => Some(n),
            _ => None,
        };
        let (Some(username), true, Some(nonce)) = (username, realm, nonce) else {
            self.respond_error(socket, msg, error::BAD_REQUEST, false, None);
            return None;
        };
        if !self.nonce_fresh(nonce) {
            bump(&mut self.stats.stale_nonces);
            self.respond_error(socket, msg, error::STALE_NONCE, true, None);
            return None;
        }
        let key = self.password(username).map(|p| {
            long_term_key(
                username.as_bytes(),
                self.config.realm.as_bytes(),
                p.as_bytes(),
            )
        });
        match key {
            Some(key) if msg.verify_integrity(&key).is_ok() => Some(Authed {
                username: username.to_string(),
                key,
            }),
            _ => {
                bump(&mut self.stats.auth_refused);
                self.respond_error(socket, msg, error::UNAUTHENTICATED, true, None);
                None
            }
        }
    }
}
