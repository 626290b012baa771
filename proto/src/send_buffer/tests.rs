use super::*;

fn refusal() -> SocketOutcome {
    SocketOutcome::Failed {
        op: OpKind::Send,
        destination: None,
        error: IoError::WouldBlock,
    }
}

/// Every transmit `b` would hand over now, as byte vectors.
fn drain(b: &mut SendBuffer) -> Vec<Vec<u8>> {
    let mut buf = [0u8; TRANSMIT_BUFFER_LEN];
    let mut out = Vec::new();
    while let Some(n) = b.poll_transmit(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn push_takes_what_fits() {
    let mut b = SendBuffer::new(10);
    assert_eq!(b.push(&[1; 4]), 4);
    assert_eq!(b.room(), 6);
    assert_eq!(b.push(&[2; 8]), 6);
    assert_eq!(b.push(&[3]), 0);
    assert_eq!(b.len(), 10);
    assert_eq!(b.capacity(), 10);
}

#[test]
fn a_batch_starts_with_the_odd_remainder_then_full_transmits() {
    let mut b = SendBuffer::new(1 << 20);
    let data = pattern(3 * TRANSMIT_BUFFER_LEN + 7);
    b.push(&data);
    let sent = drain(&mut b);
    let lens: Vec<usize> = sent.iter().map(Vec::len).collect();
    assert_eq!(lens, [7, 1500, 1500, 1500]);
    assert_eq!(sent.concat(), data);
    assert!(b.wants_settle());
    // Nothing is dropped before the settle point.
    assert_eq!(b.len(), data.len());
    b.settle();
    assert!(b.is_empty() && b.is_settled() && !b.wants_settle());
}

#[test]
fn a_short_tail_pushed_mid_batch_waits_for_the_settle_point() {
    let mut b = SendBuffer::new(1 << 20);
    b.push(&pattern(1500));
    assert_eq!(drain(&mut b).len(), 1);
    b.push(&[9; 10]);
    assert!(drain(&mut b).is_empty());
    b.settle();
    assert_eq!(drain(&mut b), [vec![9; 10]]);
}

#[test]
fn refused_transmits_stay_buffered_in_order_and_go_out_after_writable_and_settle() {
    let mut b = SendBuffer::new(1 << 20);
    let data = pattern(4 * TRANSMIT_BUFFER_LEN);
    b.push(&data);
    let first = drain(&mut b);
    assert_eq!(first.len(), 4);
    // The runtime took two and refused the last two.
    assert_eq!(b.on_outcome(&refusal()), FlowControl::Refused);
    assert_eq!(b.on_outcome(&refusal()), FlowControl::Refused);
    assert!(!b.wants_settle(), "blocked: wait for Writable");
    assert!(drain(&mut b).is_empty(), "nothing after a refusal");
    b.settle();
    assert_eq!(
        b.len(),
        2 * TRANSMIT_BUFFER_LEN,
        "the two refused transmits' bytes"
    );
    assert!(drain(&mut b).is_empty(), "still blocked until Writable");
    assert_eq!(
        b.on_outcome(&SocketOutcome::Writable),
        FlowControl::Writable
    );
    let again = drain(&mut b);
    assert_eq!(again.concat(), data[2 * TRANSMIT_BUFFER_LEN..]);
    b.settle();
    assert!(b.is_empty());
}

#[test]
fn a_refusal_beyond_what_was_sent_is_not_flow_control() {
    let mut b = SendBuffer::new(100);
    assert_eq!(b.on_outcome(&refusal()), FlowControl::NotFlowControl);
    b.push(&[1; 5]);
    assert_eq!(drain(&mut b).len(), 1);
    assert_eq!(b.on_outcome(&refusal()), FlowControl::Refused);
    assert_eq!(b.on_outcome(&refusal()), FlowControl::NotFlowControl);
    let broken = SocketOutcome::Failed {
        op: OpKind::Send,
        destination: None,
        error: IoError::BrokenPipe,
    };
    assert_eq!(b.on_outcome(&broken), FlowControl::NotFlowControl);
    assert_eq!(
        b.on_outcome(&SocketOutcome::PeerClosed),
        FlowControl::NotFlowControl
    );
}

#[test]
fn clear_forgets_everything() {
    let mut b = SendBuffer::new(100);
    b.push(&[1; 50]);
    let _ = drain(&mut b);
    let _ = b.on_outcome(&refusal());
    b.clear();
    assert!(b.is_empty() && b.is_settled());
    b.push(&[2; 3]);
    assert_eq!(drain(&mut b), [vec![2; 3]]);
}
