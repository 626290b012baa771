//! The registry rules: what the server answers to one authenticated request, given its store.
//! Pure logic over the [`NameStore`]; no sockets, no envelopes.

use crate::identity::PublicKey;

use super::record::Record;
use super::store::{NameStore, SourceKey, StoredName};
use super::wire::{ErrorCode, ReplyBody, Request};

/// The limits the rules enforce.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Rules {
    /// Names one source may hold.
    pub max_names_per_source: u64,
    /// Longest record lifetime from now, in ms.
    pub max_lifetime_ms: u64,
    /// Clock skew allowed on top of the lifetime, in ms.
    pub max_future_ms: u64,
}

/// Counters the rules update.
#[derive(Copy, Clone, Debug, Default)]
pub(crate) struct RuleCounters {
    pub store_errors: u64,
}

fn error(code: ErrorCode, detail: u64) -> ReplyBody {
    ReplyBody::Error { code, detail }
}

/// Answers `request` from `sender` (authenticated by its envelope) coming from `source`, at Unix
/// time `now_ms`.
pub(crate) fn execute<S: NameStore + ?Sized>(
    store: &mut S,
    rules: &Rules,
    counters: &mut RuleCounters,
    now_ms: u64,
    source: SourceKey,
    sender: &PublicKey,
    request: Request,
) -> ReplyBody {
    let result = match request {
        Request::Register(record) => register(store, rules, now_ms, source, sender, *record),
        Request::Lookup(name) => live(store, &name, now_ms).map(|found| match found {
            Some(entry) => ReplyBody::Found(Box::new(entry.record)),
            None => error(ErrorCode::NotFound, 0),
        }),
        Request::Delete { name, version } => {
            live(store, &name, now_ms).and_then(|found| match found {
                None => Ok(error(ErrorCode::NotFound, 0)),
                Some(entry) if entry.record.owner() != sender => Ok(error(ErrorCode::NotOwner, 0)),
                Some(entry) if version <= entry.record.version() => {
                    Ok(error(ErrorCode::StaleVersion, entry.record.version()))
                }
                Some(_) => store.delete(&name).map(|_| ReplyBody::Deleted { version }),
            })
        }
    };
    result.unwrap_or_else(|_| {
        counters.store_errors = counters.store_errors.saturating_add(1);
        error(ErrorCode::ServerBusy, 0)
    })
}

/// The live (unexpired) entry for `name`.
fn live<S: NameStore + ?Sized>(
    store: &S,
    name: &super::Name,
    now_ms: u64,
) -> Result<Option<StoredName>, super::StoreError> {
    Ok(store
        .get(name)?
        .filter(|entry| !entry.record.is_expired(now_ms)))
}

fn register<S: NameStore + ?Sized>(
    store: &mut S,
    rules: &Rules,
    now_ms: u64,
    source: SourceKey,
    sender: &PublicKey,
    record: Record,
) -> Result<ReplyBody, super::StoreError> {
    if record.owner() != sender {
        return Ok(error(ErrorCode::NotOwner, 0));
    }
    if !record.verify() {
        return Ok(error(ErrorCode::BadSignature, 0));
    }
    let latest_expiry = now_ms
        .saturating_add(rules.max_lifetime_ms)
        .saturating_add(rules.max_future_ms);
    if record.is_expired(now_ms) || record.expires_ms() > latest_expiry {
        return Ok(error(ErrorCode::InvalidExpiry, latest_expiry));
    }
    let existing = live(store, record.name(), now_ms)?;
    if let Some(entry) = &existing {
        if entry.record.owner() != sender {
            return Ok(error(ErrorCode::NotOwner, 0));
        }
        let stored = entry.record.version();
        if record.version() == stored && record == entry.record {
            // A retransmission (or a repeat) of what is stored: harmless, and not a new name.
            return Ok(ReplyBody::Registered { version: stored });
        }
        if record.version() <= stored {
            return Ok(error(ErrorCode::StaleVersion, stored));
        }
    }
    let moves_source = existing.as_ref().is_none_or(|e| e.source != source);
    if moves_source && store.count_for_source(source, now_ms)? >= rules.max_names_per_source {
        return Ok(error(ErrorCode::QuotaExceeded, rules.max_names_per_source));
    }
    let version = record.version();
    match store.put(StoredName { record, source }, now_ms) {
        Ok(()) => Ok(ReplyBody::Registered { version }),
        Err(super::StoreError::Full) => Ok(error(ErrorCode::ServerBusy, 0)),
        Err(e) => Err(e),
    }
}
