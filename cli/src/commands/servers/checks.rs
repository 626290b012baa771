//! One check per kind of server, each on its own runtime (the caller runs them on threads of
//! their own, so they all run at once). Every check ends within its `timeout` (plus a bounded
//! close) and returns the RTT or why it failed, in words.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::time::{Duration, Instant as StdInstant};

use p2pd_mio::{RunEnd, Runtime};
use p2pd_proto::client::{
    BindingResponse, ClientConfig, ClientEvent, Failure, Request, Retransmit, StunClient,
};
use p2pd_proto::client_tcp::{TcpBinding, TcpBindingConfig, TcpBindingEvent};
use p2pd_proto::stun::ChangeRequest;
use p2pd_proto::BindOptions;
use p2pd_signaling::mqtt::{MqttClient, MqttConfig, MqttEvent};
use p2pd_signaling::pnp::{
    Name, PnpClient, PnpClientConfig, PnpClientEvent, PnpFailure, PnpTransport,
};
use p2pd_signaling::PublicKey;
use p2pd_turn::{TurnClient, TurnConfig, TurnEvent, TurnFailure};

use crate::identity_file::{generate_identity, os_seed};

/// How long closing a machine may take after its check.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Whether a STUN server over UDP does RFC 5780.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rfc5780 {
    /// Its reply named an OTHER-ADDRESS, and a CHANGE-REQUEST (IP and port) was answered from it.
    Yes,
    /// No OTHER-ADDRESS, or the change request was refused, or not answered from the other
    /// address before the deadline.
    No,
    /// The server did not answer the Binding request at all.
    Unknown,
}

impl Rfc5780 {
    /// `yes`, `no` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rfc5780::Yes => "yes",
            Rfc5780::No => "no",
            Rfc5780::Unknown => "unknown",
        }
    }
}

/// The unspecified address of `server`'s family, any port.
fn any_local(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// `d` in seconds, to the millisecond, without trailing zeros (`3 s`, `0.25 s`).
fn seconds(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} s")
}

/// A seed from the OS, or from the clock should the OS source fail (ids need not be secret here).
fn seed() -> u64 {
    os_seed().unwrap_or_else(|_| super::super::stun::seed_from_os())
}

/// STUN over UDP: a Binding request; if the reply names an OTHER-ADDRESS, a CHANGE-REQUEST (IP
/// and port) that must be answered from that address. Returns the Binding's RTT (or why it
/// failed) and whether the server does RFC 5780. Both requests share `timeout`.
pub fn stun_udp(server: SocketAddr, timeout: Duration) -> (Result<Duration, String>, Rfc5780) {
    let deadline = StdInstant::now() + timeout;
    let mut rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return (Err(format!("runtime: {e}")), Rfc5780::Unknown),
    };
    let rto = (timeout / 6).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let config = ClientConfig {
        retransmit: Retransmit::Rfc5389 {
            rto,
            transmissions: 7,
            last_wait: 16,
            max_rto: Duration::from_secs(60),
        },
        ..ClientConfig::default()
    };
    let mut client = StunClient::new(config, seed());
    let socket = match client.open_socket(rt.now(), any_local(server), BindOptions::default()) {
        Ok(s) => s,
        Err(e) => return (Err(e.to_string()), Rfc5780::Unknown),
    };
    let binding = transact(
        &mut rt,
        &mut client,
        Request::binding(socket, server),
        deadline,
    )
    .map_err(|e| e.unwrap_or_else(|| format!("no reply within {}", seconds(timeout))));
    let result = match binding {
        Err(e) => (Err(e), Rfc5780::Unknown),
        Ok(reply) => match reply.other_address {
            None => (Ok(reply.rtt), Rfc5780::No),
            Some(other) => {
                let change = Request::binding(socket, server)
                    .with_change(ChangeRequest::BOTH)
                    .expect_from(other);
                // The client accepts the reply only from `other`: an answer is the proof. A
                // refusal (420), a reply from elsewhere or silence until the deadline is a no.
                let rfc5780 = match transact(&mut rt, &mut client, change, deadline) {
                    Ok(_) => Rfc5780::Yes,
                    Err(_) => Rfc5780::No,
                };
                (Ok(reply.rtt), rfc5780)
            }
        },
    };
    client.close(rt.now());
    let _ = rt.run(&mut client, Some(CLOSE_LIMIT), |_, _, ev| match ev {
        ClientEvent::Closed => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    result
}

/// Runs one transaction until it ends or `deadline` passes (then it is cancelled and the error
/// is `None`).
fn transact(
    rt: &mut Runtime,
    client: &mut StunClient,
    request: Request,
    deadline: StdInstant,
) -> Result<BindingResponse, Option<String>> {
    let server = request.server;
    let handle = client
        .start(rt.now(), request)
        .map_err(|e| Some(format!("cannot start the request: {e}")))?;
    let mut result: Option<Result<BindingResponse, String>> = None;
    let limit = deadline.saturating_duration_since(StdInstant::now());
    let end = rt.run(client, Some(limit), |_, _, ev| match ev {
        ClientEvent::SocketFailed { error, .. } => {
            result = Some(Err(format!("cannot bind a UDP socket: {error}")));
            ControlFlow::Break(())
        }
        ClientEvent::Transaction(t) if t.id == handle => {
            result = Some(t.outcome.map_err(|f| stun_failure(server, &f)));
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    if let Err(e) = end {
        return Err(Some(format!("event loop: {e}")));
    }
    match result {
        Some(r) => r.map_err(Some),
        None => {
            client.cancel(rt.now(), handle);
            let _ = rt.drive(client, |_, _, _| ControlFlow::Continue(()));
            Err(None)
        }
    }
}

fn stun_failure(server: SocketAddr, f: &Failure) -> String {
    match f {
        Failure::Timeout { transmissions } => {
            format!("no reply from {server} after {transmissions} transmission(s)")
        }
        Failure::ErrorResponse { code, reason } => format!("error response {code} {reason}"),
        other => other.to_string(),
    }
}

/// STUN over TCP: one Binding on a fresh connection; its RTT (from the connect's completion to
/// the answer) or why it failed.
pub fn stun_tcp(server: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = TcpBindingConfig::new(server, any_local(server));
    config.timeout = timeout;
    let mut binding = TcpBinding::new(config, seed(), rt.now());
    let mut result: Option<Result<Duration, String>> = None;
    let limit = timeout.saturating_add(CLOSE_LIMIT);
    let end = rt.run(&mut binding, Some(limit), |_, _, ev| {
        match ev {
            TcpBindingEvent::Mapped(m) => result = Some(Ok(m.rtt)),
            TcpBindingEvent::Failed { reason } => {
                result = Some(Err(match reason {
                    p2pd_proto::client_tcp::TcpBindingError::Timeout => {
                        format!("no answer over TCP within {}", seconds(timeout))
                    }
                    other => other.to_string(),
                }))
            }
            TcpBindingEvent::Closed { .. } => return ControlFlow::Break(()),
            _ => {}
        }
        ControlFlow::Continue(())
    });
    if end.as_ref().is_ok_and(|e| *e != RunEnd::Break) {
        binding.close(rt.now());
        let _ = rt.run(&mut binding, Some(CLOSE_LIMIT), |_, _, ev| match ev {
            TcpBindingEvent::Closed { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        });
    }
    end.map_err(|e| format!("event loop: {e}"))?;
    result.unwrap_or_else(|| Err(format!("no answer over TCP within {}", seconds(timeout))))
}

/// An MQTT broker: TCP connect, CONNECT, CONNACK (MQTT 5, or 3.1.1 when the broker refuses 5).
/// The time from the start to the CONNACK (TCP handshake included), or why the attempt failed
/// (no reconnect after a failure).
pub fn mqtt(broker: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let mut config = MqttConfig::new(broker);
    config.connect_timeout = timeout;
    config.backoff_initial = Duration::from_secs(60);
    let started = rt.now();
    let mut client = MqttClient::new(config, seed(), started);
    let mut result: Option<Result<Duration, String>> = None;
    let end = rt.run(
        &mut client,
        Some(timeout.saturating_add(Duration::from_millis(100))),
        |_, now, ev| match ev {
            MqttEvent::Connected { .. } => {
                result = Some(Ok(now.saturating_duration_since(started)));
                ControlFlow::Break(())
            }
            // A broker refusing MQTT 5 is retried at once in 3.1.1: wait for that attempt.
            MqttEvent::Disconnected { retry_in, .. } if retry_in.is_zero() => {
                ControlFlow::Continue(())
            }
            MqttEvent::Disconnected { reason, .. } => {
                result = Some(Err(reason.to_string()));
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        },
    );
    client.close(rt.now());
    let _ = rt.run(&mut client, Some(CLOSE_LIMIT), |_, _, ev| match ev {
        MqttEvent::Closed => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    end.map_err(|e| format!("event loop: {e}"))?;
    result.unwrap_or_else(|| Err(format!("no CONNACK within {}", seconds(timeout))))
}

/// A PNP server: a lookup of a random unused name with a throwaway identity. A verified reply
/// (NotFound, or a record) proves the server holds `key`; replies signed by another key are
/// dropped by the client and reported here.
pub fn pnp(server: SocketAddr, key: &PublicKey, timeout: Duration) -> Result<Duration, String> {
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let identity = generate_identity().map_err(|e| format!("throwaway key: {e}"))?;
    let mut config = PnpClientConfig::new(server, *key, PnpTransport::Udp, rt.unix_epoch_ms());
    config.timeout = timeout;
    config.retransmit = (timeout / 6).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut client = PnpClient::new(config, identity, seed());
    let name = Name::new(&format!("p2pd-health-{:016x}", seed()))
        .map_err(|e| format!("probe name: {e}"))?;
    let started = rt.now();
    client
        .lookup(started, name)
        .map_err(|e| format!("cannot start the lookup: {e}"))?;
    let mut outcome: Option<PnpClientEvent> = None;
    let end = rt.run(
        &mut client,
        Some(timeout.saturating_add(Duration::from_millis(200))),
        |_, _, ev| match ev {
            PnpClientEvent::Closed => ControlFlow::Break(()),
            ev => {
                outcome = Some(ev);
                ControlFlow::Break(())
            }
        },
    );
    let answered = rt.now().saturating_duration_since(started);
    let stats = client.stats();
    client.close(rt.now());
    let _ = rt.run(&mut client, Some(CLOSE_LIMIT), |_, _, ev| match ev {
        PnpClientEvent::Closed => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    end.map_err(|e| format!("event loop: {e}"))?;
    let wrong_key = || {
        format!(
            "{} repl{} not signed by the configured key (does the server hold another key?)",
            stats.bad_envelopes,
            if stats.bad_envelopes == 1 { "y" } else { "ies" }
        )
    };
    match outcome {
        Some(PnpClientEvent::NotFound { .. } | PnpClientEvent::Found { .. }) => Ok(answered),
        Some(PnpClientEvent::Failed { reason, .. }) => Err(match reason {
            PnpFailure::Timeout if stats.bad_envelopes > 0 => wrong_key(),
            PnpFailure::Timeout => format!(
                "no valid reply within {} (server down, or it does not hold the configured key)",
                seconds(timeout)
            ),
            other => other.to_string(),
        }),
        Some(_) => Err("unexpected reply to a lookup".into()),
        None if stats.bad_envelopes > 0 => Err(wrong_key()),
        None => Err(format!("no valid reply within {}", seconds(timeout))),
    }
}

/// A TURN relay: an Allocate with `config`'s credentials (each step, and the whole allocation,
/// within `timeout`), then the deallocation (within [`CLOSE_LIMIT`]). The time from the start to
/// the allocation (TCP connect and 401 challenge included) and the relayed address, or why it
/// failed.
pub fn relay_turn(
    mut config: TurnConfig,
    timeout: Duration,
) -> Result<(Duration, SocketAddr), String> {
    if timeout.is_zero() {
        return Err("no time to allocate (--timeout 0)".into());
    }
    let mut rt = Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    config.timeout = timeout;
    let started = rt.now();
    let mut client = TurnClient::new(config, seed(), started);
    let mut result: Option<Result<(Duration, SocketAddr), String>> = None;
    let end = rt.run(
        &mut client,
        Some(timeout.saturating_add(Duration::from_millis(100))),
        |_, now, ev| match ev {
            TurnEvent::Allocated { relayed, .. } => {
                result = Some(Ok((now.saturating_duration_since(started), relayed)));
                ControlFlow::Break(())
            }
            TurnEvent::Failed(failure) => {
                result = Some(Err(turn_failure(failure, timeout)));
                ControlFlow::Break(())
            }
            TurnEvent::Closed { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    );
    // Deallocate (a Refresh with LIFETIME 0) and close the control connection.
    client.close(rt.now());
    let mut deallocated = None;
    let _ = rt.run(&mut client, Some(CLOSE_LIMIT), |_, _, ev| match ev {
        TurnEvent::Closed { deallocated: d } => {
            deallocated = Some(d);
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    });
    tracing::debug!(?deallocated, "relay check closed");
    end.map_err(|e| format!("event loop: {e}"))?;
    result.unwrap_or_else(|| Err(format!("no allocation within {}", seconds(timeout))))
}

/// Why an allocation failed, in words.
fn turn_failure(failure: TurnFailure, timeout: Duration) -> String {
    match failure {
        TurnFailure::Unauthenticated => {
            "authentication refused (401): wrong user name, password or secret".into()
        }
        TurnFailure::WrongCredentials => "authentication refused (441 wrong credentials)".into(),
        TurnFailure::Timeout => format!("no answer within {}", seconds(timeout)),
        TurnFailure::ConnectFailed(e) => format!("cannot connect over TCP: {e}"),
        TurnFailure::BindFailed(e) => format!("cannot bind a TCP socket: {e}"),
        other => format!("allocation refused or failed: {other}"),
    }
}
