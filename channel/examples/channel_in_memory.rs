//! Two `Channel`s talking through memory: Alice opens a channel to Bob (the handshake proves both
//! identities), data flows both ways, each side finishes (the authenticated half-close) and the
//! stream ends cleanly. Then Alice tries again, expecting Bob, but Mallory answers: the channel
//! fails with `WrongPeer` before Alice sends anything of her own. The loop below plays the byte
//! stream: it moves whatever one side has to write to the other side's input.
//!
//! ```text
//! cargo run -p p2pd-channel --example channel_in_memory
//! ```
// Example code: the package's strict lints (Cargo.toml `[lints]`) guard its library code.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]

use std::time::Duration;

use p2pd_channel::{
    Channel, ChannelConfig, ChannelEvent, ChannelFailure, ChannelKeys, Identity, Instant, Role,
    SeedSource,
};

/// Moves bytes both ways until neither side has anything to write; returns every event each
/// side reported (Alice's, Bob's) and how many bytes went each way.
fn pump(
    now: Instant,
    alice: &mut Channel,
    bob: &mut Channel,
) -> (Vec<ChannelEvent>, Vec<ChannelEvent>, usize, usize) {
    let (mut to_bob, mut to_alice) = (0, 0);
    let (mut alice_events, mut bob_events) = (Vec::new(), Vec::new());
    loop {
        let ab = alice.pending_transmit().to_vec();
        alice.consume_transmit(ab.len());
        let ba = bob.pending_transmit().to_vec();
        bob.consume_transmit(ba.len());
        if ab.is_empty() && ba.is_empty() {
            return (alice_events, bob_events, to_bob, to_alice);
        }
        to_bob += ab.len();
        to_alice += ba.len();
        bob.handle_input(now, &ab);
        alice.handle_input(now, &ba);
        alice_events.extend(std::iter::from_fn(|| alice.poll_event()));
        bob_events.extend(std::iter::from_fn(|| bob.poll_event()));
    }
}

/// The plaintext in `events`, in order.
fn data(events: &[ChannelEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            ChannelEvent::Data(d) => Some(d.as_slice()),
            _ => None,
        })
        .flatten()
        .copied()
        .collect()
}

fn main() {
    // Each node: an identity (secp256k1) and, once, its channel keys (a Noise static key signed
    // by the identity). A runtime draws these secrets from the OS; here they are fixed.
    let alice_id = Identity::from_secret_bytes(&[0xa1; 32]).unwrap();
    let bob_id = Identity::from_secret_bytes(&[0xb0; 32]).unwrap();
    let mallory_id = Identity::from_secret_bytes(&[0x3a; 32]).unwrap();
    let mut seeds = SeedSource::new([7; 32]);
    let alice_keys = ChannelKeys::new(&alice_id, seeds.next_seed()).unwrap();
    let bob_keys = ChannelKeys::new(&bob_id, seeds.next_seed()).unwrap();
    let mallory_keys = ChannelKeys::new(&mallory_id, seeds.next_seed()).unwrap();
    let config = ChannelConfig::default();
    // Both ends bind the channel to the same context (a session id, say).
    let context = b"example session 1";
    let mut now = Instant::ZERO;

    // 1. The handshake: Alice names the identity she expects; Bob accepts anyone but himself.
    let mut alice = Channel::new(
        config,
        &alice_keys,
        Role::Initiator {
            expect: bob_id.node_id(),
        },
        context,
        seeds.next_seed(),
        now,
    )
    .unwrap();
    let mut bob = Channel::new(
        config,
        &bob_keys,
        Role::Responder { expect: None },
        context,
        seeds.next_seed(),
        now,
    )
    .unwrap();
    assert_eq!(alice.poll_timeout(), Some(now + config.handshake_timeout));
    now = now + Duration::from_millis(20);
    let (a, b, to_bob, to_alice) = pump(now, &mut alice, &mut bob);
    assert_eq!(
        a,
        [ChannelEvent::Established {
            peer: bob_id.public_key()
        }]
    );
    assert_eq!(
        b,
        [ChannelEvent::Established {
            peer: alice_id.public_key()
        }]
    );
    assert_eq!(alice.poll_timeout(), None, "no deadline once established");
    println!("handshake: {to_bob} bytes to Bob, {to_alice} to Alice; both identities proven");
    println!("  Alice sees {}", bob_id.node_id());
    println!("  Bob sees   {}", alice_id.node_id());

    // 2. Data both ways: a short message, and 40 000 bytes cut into frames of at most 16 KiB.
    let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(alice.send(now, b"hello Bob").unwrap(), 9);
    assert_eq!(bob.send(now, &big).unwrap(), big.len());
    let (a, b, to_bob, to_alice) = pump(now, &mut alice, &mut bob);
    assert_eq!(data(&b), b"hello Bob");
    assert_eq!(data(&a), big);
    println!(
        "data: Bob got {:?} ({to_bob} bytes on the wire); Alice got {} bytes in {} frames ({to_alice} on the wire)",
        String::from_utf8_lossy(&data(&b)),
        big.len(),
        a.len()
    );

    // 3. Finish both ways (the authenticated half-close), then the stream ends cleanly.
    alice.send(now, b"bye").unwrap();
    alice.finish(now).unwrap();
    let (a, b, _, _) = pump(now, &mut alice, &mut bob);
    assert_eq!(
        b,
        [
            ChannelEvent::Data(b"bye".to_vec()),
            ChannelEvent::PeerFinished
        ]
    );
    // Bob's channel acknowledged Alice's FINISH by itself: she knows he has every byte.
    assert_eq!(a, [ChannelEvent::FinishAcknowledged]);
    bob.send(now, b"bye to you").unwrap();
    bob.finish(now).unwrap();
    let (a, b, _, _) = pump(now, &mut alice, &mut bob);
    assert_eq!(
        a,
        [
            ChannelEvent::Data(b"bye to you".to_vec()),
            ChannelEvent::PeerFinished
        ]
    );
    assert_eq!(b, [ChannelEvent::FinishAcknowledged]);
    // Each side sees the stream's end (TCP FIN) after the other's FINISH: no failure.
    alice.handle_end_of_stream(now);
    bob.handle_end_of_stream(now);
    assert!(alice.poll_event().is_none() && bob.poll_event().is_none());
    alice.close(now);
    bob.close(now);
    assert_eq!(alice.poll_event(), Some(ChannelEvent::Closed));
    assert_eq!(bob.poll_event(), Some(ChannelEvent::Closed));
    println!(
        "finish: both sides finished; the stream ended cleanly ({} frames out, {} in at Alice)",
        alice.stats().frames_out,
        alice.stats().frames_in
    );

    // 4. The wrong identity: Alice expects Bob, Mallory answers with a valid proof of her own.
    let mut alice = Channel::new(
        config,
        &alice_keys,
        Role::Initiator {
            expect: bob_id.node_id(),
        },
        context,
        seeds.next_seed(),
        now,
    )
    .unwrap();
    let mut mallory = Channel::new(
        config,
        &mallory_keys,
        Role::Responder { expect: None },
        context,
        seeds.next_seed(),
        now,
    )
    .unwrap();
    let (a, m, to_mallory, _) = pump(now, &mut alice, &mut mallory);
    assert_eq!(
        a,
        [ChannelEvent::Failed(ChannelFailure::WrongPeer {
            expected: Some(bob_id.node_id()),
            proved: mallory_id.node_id(),
        })]
    );
    // Alice sent only her first message (an ephemeral key): not her proof, not a byte of data.
    assert_eq!(to_mallory, 2 + 32);
    assert!(m.is_empty() && !mallory.is_established());
    assert!(alice.is_ended() && alice.send(now, b"secret").is_err());
    println!(
        "wrong identity: {}",
        match &a[0] {
            ChannelEvent::Failed(failure) => failure.to_string(),
            other => format!("{other:?}"),
        }
    );
    println!("ok");
}
