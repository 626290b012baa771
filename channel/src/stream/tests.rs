//! Two secure streams over an in-memory pipe: the handshake, data both ways, flow control,
//! finishing, truncation and failures.

use core::time::Duration;

use p2pd_proto::{IoError, OpKind, SocketOutcome, TRANSMIT_BUFFER_LEN};
use p2pd_signaling::{Identity, NodeId};

use super::*;
use crate::{ChannelConfig, ChannelKeys, Role};

fn identity(byte: u8) -> Identity {
    Identity::from_secret_bytes(&[byte; 32]).unwrap()
}

fn keys(byte: u8) -> ChannelKeys {
    ChannelKeys::new(&identity(byte), [byte.wrapping_add(100); 32]).unwrap()
}

fn t(ms: u64) -> Instant {
    Instant::ZERO.saturating_add(Duration::from_millis(ms))
}

/// A fresh initiator (identity 1) expecting `expect` and a fresh responder (identity 2).
fn channels(expect: NodeId) -> (Channel, Channel) {
    let config = ChannelConfig::default();
    let a = Channel::new(
        config,
        &keys(1),
        Role::Initiator { expect },
        b"ctx",
        [11; 32],
        t(0),
    )
    .unwrap();
    let b = Channel::new(
        config,
        &keys(2),
        Role::Responder { expect: None },
        b"ctx",
        [22; 32],
        t(0),
    )
    .unwrap();
    (a, b)
}

/// Two streams over an in-memory pipe, with every event each reported.
struct Pipe {
    a: SecureStream,
    b: SecureStream,
    now: Instant,
    a_events: Vec<StreamEvent>,
    b_events: Vec<StreamEvent>,
}

impl Pipe {
    fn new(expect: NodeId) -> Pipe {
        let (a, b) = channels(expect);
        Pipe {
            a: SecureStream::new(a),
            b: SecureStream::new(b),
            now: t(0),
            a_events: Vec::new(),
            b_events: Vec::new(),
        }
    }

    fn established() -> Pipe {
        let mut p = Pipe::new(identity(2).node_id());
        p.run();
        assert!(p.a.is_established() && p.b.is_established());
        p.a_events.clear();
        p.b_events.clear();
        p
    }

    /// Moves every byte both ways (the runtime takes every transmit) until nothing moves.
    fn run(&mut self) {
        let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
        loop {
            let mut moved = false;
            while let Some(n) = self.a.poll_transmit(&mut buf) {
                self.b.handle_bytes(self.now, &buf[..n]);
                moved = true;
            }
            while let Some(n) = self.b.poll_transmit(&mut buf) {
                self.a.handle_bytes(self.now, &buf[..n]);
                moved = true;
            }
            for s in [&mut self.a, &mut self.b] {
                if s.wants_settle() {
                    s.handle_timeout(self.now);
                    moved = true;
                }
            }
            self.collect();
            if !moved {
                break;
            }
        }
    }

    fn collect(&mut self) {
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
    }
}

fn data(events: &[StreamEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Data(d) => Some(d.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn refusal() -> SocketOutcome {
    SocketOutcome::Failed {
        op: OpKind::Send,
        destination: None,
        error: IoError::WouldBlock,
    }
}

#[test]
fn the_handshake_completes_and_data_flows_both_ways() {
    let mut p = Pipe::new(identity(2).node_id());
    assert!(!p.a.is_established() && p.a.is_open());
    assert_eq!(
        p.a.send(p.now, b"early"),
        Err(StreamApiError::NotEstablished)
    );
    assert_eq!(p.a.finish(p.now), Err(StreamApiError::NotEstablished));
    assert_eq!(p.a.send_room(), 0);
    assert!(p.a.poll_timeout().is_some(), "the handshake deadline");
    p.run();
    assert_eq!(
        p.a_events,
        vec![StreamEvent::Established {
            peer: identity(2).public_key()
        }]
    );
    assert_eq!(
        p.b_events,
        vec![StreamEvent::Established {
            peer: identity(1).public_key()
        }]
    );
    assert_eq!(p.a.peer(), Some(identity(2).public_key()));
    assert_eq!(p.a.poll_timeout(), None);
    assert_eq!(p.a.send(p.now, b"hello"), Ok(5));
    assert_eq!(p.b.send(p.now, b"world"), Ok(5));
    p.run();
    assert_eq!(data(&p.b_events), b"hello");
    assert_eq!(data(&p.a_events), b"world");
    assert_eq!(p.a.queued(), 0);
}

#[test]
fn an_established_channel_is_not_reported_again_and_its_pending_output_goes_first() {
    // The responder's channel establishes on message 3; the initiator's message 3 waits in its
    // channel, and the stream made from it sends it.
    let (mut a, mut b) = channels(identity(2).node_id());
    let moved = |from: &mut Channel, to: &mut Channel| {
        let out = from.pending_transmit().to_vec();
        from.consume_transmit(out.len());
        to.handle_input(t(0), &out);
    };
    moved(&mut a, &mut b);
    moved(&mut b, &mut a);
    assert!(a.is_established() && !b.is_established());
    assert!(!a.pending_transmit().is_empty(), "message 3");
    let mut sa = SecureStream::new(a);
    let mut sb = SecureStream::new(b);
    assert_eq!(sa.poll_event(), None, "established already");
    assert!(sa.queued() > 0);
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    let n = sa.poll_transmit(&mut buf).unwrap();
    sb.handle_bytes(t(0), &buf[..n]);
    assert_eq!(
        sb.poll_event(),
        Some(StreamEvent::Established {
            peer: identity(1).public_key()
        })
    );
}

#[test]
fn a_failed_handshake_is_failed_then_peer_finished() {
    // The initiator expects someone else.
    let mut p = Pipe::new(identity(3).node_id());
    p.run();
    assert!(
        matches!(
            p.a_events.as_slice(),
            [
                StreamEvent::Failed(ChannelFailure::WrongPeer { .. }),
                StreamEvent::PeerFinished
            ]
        ),
        "{:?}",
        p.a_events
    );
    assert!(!p.a.is_open());
    assert_eq!(p.a.send(p.now, b"x"), Err(StreamApiError::Closed));
    // A responder left alone times out.
    let (_, b) = channels(identity(2).node_id());
    let mut b = SecureStream::new(b);
    let deadline = b.poll_timeout().unwrap();
    b.handle_timeout(deadline);
    assert_eq!(
        b.poll_event(),
        Some(StreamEvent::Failed(ChannelFailure::HandshakeTimeout))
    );
    assert_eq!(b.poll_event(), Some(StreamEvent::PeerFinished));
    assert_eq!(b.poll_event(), None);
}

#[test]
fn a_full_buffer_takes_what_fits_and_reports_writable() {
    let mut p = Pipe::established();
    let big = pattern(SEND_BUFFER + 50_000);
    let room = p.a.send_room();
    let taken = p.a.send(p.now, &big).unwrap();
    assert_eq!(taken, room);
    assert!(taken < big.len());
    assert_eq!(p.a.send_room(), 0);
    assert!(matches!(
        p.a.send(p.now, &big[taken..]),
        Err(StreamApiError::SendBufferFull { .. })
    ));
    p.run();
    assert_eq!(p.a_events, vec![StreamEvent::Writable]);
    let rest = p.a.send(p.now, &big[taken..]).unwrap();
    assert_eq!(taken + rest, big.len());
    p.run();
    assert_eq!(data(&p.b_events), big);
}

#[test]
fn finish_shuts_down_once_everything_is_taken_and_the_peer_sees_it_finished() {
    let mut p = Pipe::established();
    p.a.send(p.now, b"last words").unwrap();
    p.a.finish(p.now).unwrap();
    p.a.finish(p.now).unwrap();
    assert_eq!(p.a.send(p.now, b"more"), Err(StreamApiError::Finished));
    assert!(!p.a.poll_shutdown(), "bytes not taken yet");
    p.run();
    assert!(p.a.poll_shutdown());
    assert!(!p.a.poll_shutdown(), "once");
    assert!(p.a.is_finished());
    p.collect();
    // The peer read the FINISH and acknowledged it (before the runtime settled our Shutdown).
    assert_eq!(
        p.a_events,
        vec![StreamEvent::FinishAcknowledged, StreamEvent::Finished]
    );
    assert!(p.a.finish_acknowledged());
    // The Shutdown reaches the peer as EOF, after the FINISH: a clean end.
    p.b.handle_outcome(p.now, &SocketOutcome::PeerClosed);
    p.collect();
    assert_eq!(data(&p.b_events), b"last words");
    assert_eq!(
        p.b_events.last(),
        Some(&StreamEvent::PeerFinished),
        "{:?}",
        p.b_events
    );
    assert!(!p
        .b_events
        .iter()
        .any(|e| matches!(e, StreamEvent::Failed(_))));
    // The peer's side is still up: it sends back and finishes too.
    assert!(p.b.is_open());
    p.b.send(p.now, b"reply").unwrap();
    p.run();
    assert_eq!(data(&p.a_events), b"reply");
}

#[test]
fn an_end_of_stream_before_the_finish_is_truncated() {
    let mut p = Pipe::established();
    p.a.send(p.now, b"partial").unwrap();
    p.run();
    p.b.handle_outcome(p.now, &SocketOutcome::PeerClosed);
    p.collect();
    assert_eq!(
        p.b_events,
        vec![
            StreamEvent::Data(b"partial".to_vec()),
            StreamEvent::Failed(ChannelFailure::Truncated),
            StreamEvent::PeerFinished
        ]
    );
    assert!(!p.b.is_open());
    assert_eq!(p.b.poll_transmit(&mut [0u8; 64]), None);
}

#[test]
fn a_refused_transmit_is_sent_again_after_writable() {
    let mut p = Pipe::established();
    let msg = pattern(3 * TRANSMIT_BUFFER_LEN);
    assert_eq!(p.a.send(p.now, &msg).unwrap(), msg.len());
    let mut buf = vec![0u8; TRANSMIT_BUFFER_LEN];
    let mut transmits = Vec::new();
    while let Some(n) = p.a.poll_transmit(&mut buf) {
        transmits.push(buf[..n].to_vec());
    }
    assert!(transmits.len() >= 2);
    // The runtime takes all but the last one.
    let last = transmits.pop().unwrap();
    for tx in &transmits {
        p.b.handle_bytes(p.now, tx);
    }
    p.a.handle_outcome(p.now, &refusal());
    assert!(!p.a.wants_settle(), "blocked until Writable");
    p.a.handle_outcome(p.now, &SocketOutcome::Writable);
    assert!(p.a.wants_settle());
    p.a.handle_timeout(p.now);
    assert_eq!(p.a.queued(), last.len());
    let n = p.a.poll_transmit(&mut buf).unwrap();
    assert_eq!(&buf[..n], &last[..]);
    p.b.handle_bytes(p.now, &buf[..n]);
    p.a.handle_timeout(p.now);
    assert_eq!(p.a.queued(), 0);
    p.collect();
    assert_eq!(data(&p.b_events), msg);
}

#[test]
fn a_reset_fails_the_stream_and_close_stops_everything() {
    let reset = SocketOutcome::Failed {
        op: OpKind::Receive,
        destination: None,
        error: IoError::ConnectionReset,
    };
    let mut p = Pipe::established();
    p.a.handle_outcome(p.now, &reset);
    p.collect();
    assert_eq!(
        p.a_events,
        vec![
            StreamEvent::Failed(ChannelFailure::Truncated),
            StreamEvent::PeerFinished
        ]
    );
    let mut p = Pipe::established();
    p.a.send(p.now, b"dropped").unwrap();
    p.a.close(p.now);
    p.a.close(p.now);
    assert!(!p.a.is_open() && !p.a.is_established());
    assert_eq!(p.a.queued(), 0);
    assert_eq!(p.a.send(p.now, b"x"), Err(StreamApiError::Closed));
    assert_eq!(p.a.finish(p.now), Err(StreamApiError::Closed));
    p.b.send(p.now, b"ignored").unwrap();
    p.run();
    assert!(p.a_events.is_empty(), "{:?}", p.a_events);
    assert!(!p.a.poll_shutdown());
}

#[test]
fn finish_acks_round_trip_both_ways_without_half_close() {
    let mut p = Pipe::established();
    p.a.set_no_half_close();
    p.b.set_no_half_close();
    p.a.send(p.now, b"request").unwrap();
    p.a.finish(p.now).unwrap();
    p.run();
    assert!(p.a.poll_shutdown());
    p.collect();
    assert!(p.a.finish_acknowledged());
    assert_eq!(
        p.a_events,
        vec![StreamEvent::FinishAcknowledged, StreamEvent::Finished]
    );
    assert_eq!(
        p.b_events,
        vec![
            StreamEvent::Data(b"request".to_vec()),
            StreamEvent::PeerFinished
        ]
    );
    assert!(p.b.is_peer_finished() && !p.b.finish_acknowledged());
    // The acker still sends, then finishes: the finished side (its Shutdown held by the owner)
    // acknowledges that FINISH in turn.
    p.b.send(p.now, b"response").unwrap();
    p.b.finish(p.now).unwrap();
    p.run();
    assert!(p.b.poll_shutdown());
    p.collect();
    assert_eq!(data(&p.a_events), b"response");
    assert!(p.a.is_peer_finished());
    assert!(p.b.finish_acknowledged());
    assert_eq!(
        p.b_events[2..],
        [StreamEvent::FinishAcknowledged, StreamEvent::Finished]
    );
    assert_eq!(
        p.a_events
            .iter()
            .filter(|e| **e == StreamEvent::FinishAcknowledged)
            .count(),
        1
    );
    assert!(!p
        .a_events
        .iter()
        .chain(&p.b_events)
        .any(|e| matches!(e, StreamEvent::Failed(_))));
}

#[test]
fn an_ack_due_after_our_shutdown_is_dropped_on_a_half_closed_stream() {
    let mut p = Pipe::established();
    p.a.finish(p.now).unwrap();
    p.run();
    assert!(p.a.poll_shutdown());
    p.b.finish(p.now).unwrap();
    p.run();
    assert!(p.b.poll_shutdown());
    p.collect();
    // Our sending side is shut: the ack of b's FINISH is not written (the FIN tells b).
    assert!(p.a.poll_transmit(&mut [0u8; 64]).is_none());
    assert!(p.a.finish_acknowledged() && !p.b.finish_acknowledged());
    assert!(p.a.is_open() && p.b.is_open());
    p.a.handle_outcome(p.now, &SocketOutcome::PeerClosed);
    p.b.handle_outcome(p.now, &SocketOutcome::PeerClosed);
    p.collect();
    assert!(!p
        .a_events
        .iter()
        .chain(&p.b_events)
        .any(|e| matches!(e, StreamEvent::Failed(_))));
}
