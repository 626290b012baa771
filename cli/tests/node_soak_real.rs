//! Soak on real sockets (issue 12 item 9, "100 on real sockets"): two `Node`s in this process,
//! each on its own `p2pd_mio::Runtime` (B on a thread), built from the same configuration file as
//! `p2pd node` (our STUN server over UDP + TCP with RFC 5780 on 127.0.0.1 + 127.0.0.2, our PNP
//! server, mosquitto: child processes). B registers a name; A connects to it by name 100 times in
//! sequence (at most one every [`PACE`]), each time both sides send a few KB, finish and close the
//! stream.
//!
//! Every connect must succeed by the same path, with the right bytes both ways. After a warm-up
//! of [`WARMUP`] connects, the process's open fds, both nodes' sockets and live parts, both
//! runtimes' sockets and slots, the live heap (a counting allocator) and the RSS must be flat at
//! the end. Figures are printed (connect
//! time median / p99, fds, RSS). Skips (with a message) when mosquitto is not installed; under
//! `CI=true` that fails.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path as FsPath;
use std::sync::mpsc;
use std::time::{Duration, Instant as StdInstant};

use common::heap::{live_bytes, LiveBytes};
use common::node_lab::lab;
use common::rss_kib;
use p2pd_cli::commands::node::setup::{setup, NodeOptions};
use p2pd_mio::Runtime;
use p2pd_node::{Instant, Machine, Node, NodeEvent, Path, StreamId, Target};
use p2pd_signaling::pnp::Name;

const CONNECTS: usize = 100;
const WARMUP: usize = 10;
const NAME: &str = "bob-soak";
/// The live heap (both nodes, both runtimes, this test) may grow this much between the warm-up
/// and the end.
const HEAP_SLACK: i64 = 64 * 1024;
/// The RSS may grow this much between the warm-up and the end.
const RSS_SLACK_KIB: u64 = 2048;
/// Open fds may differ by this much (a stream still lingering in a runtime).
const FD_SLACK: usize = 2;
/// Connects start at most this often: our PNP server answers 20 requests per second per source
/// IP (both nodes are 127.0.0.1, and each connect makes one lookup), and rate limiting is not
/// what this soak measures.
const PACE: Duration = Duration::from_millis(60);

/// What A sends on connect `i` (a few KB, a pattern of its own).
fn a_bytes(i: usize) -> Vec<u8> {
    pattern(0xa5, i, 3000 + (i * 37) % 2000)
}

/// What B sends on its `k`-th accepted stream.
fn b_bytes(k: usize) -> Vec<u8> {
    pattern(0x5b, k, 4000 + (k * 53) % 2000)
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

fn pattern(tag: u8, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|n| (n.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8 ^ tag)
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn start_node(config: &FsPath, key: &FsPath, name: Option<&str>, seed: u64) -> (Runtime, Node) {
    let rt = Runtime::new().expect("runtime");
    let options = NodeOptions {
        identity: Some(key.to_path_buf()),
        brokers: Vec::new(),
        stun: Vec::new(),
        local_ip: None,
        listen_port: 0,
        json: false,
    };
    let mut s = setup("soak", &options, Some(config), rt.unix_epoch_ms()).expect("node setup");
    s.config.name = name.map(|n| Name::new(n).expect("name"));
    let secret = [seed as u8; 32];
    let node = Node::new(s.config, s.identity, secret, seed, rt.now()).expect("node");
    (rt, node)
}

/// A node's and its runtime's counts (for the leak checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    node_sockets: usize,
    live: (usize, usize, usize, usize),
    rt_sockets: usize,
    rt_slots: usize,
    has_timeout: bool,
}

fn counts(rt: &Runtime, node: &Node) -> Counts {
    Counts {
        node_sockets: node.open_sockets(),
        live: node.live(),
        rt_sockets: rt.open_sockets(),
        rt_slots: rt.slot_capacity(),
        has_timeout: node.poll_timeout().is_some(),
    }
}

/// One stream's side: what it sends (pushed as the node takes it), what it got, its ends.
struct Side {
    out: Vec<u8>,
    sent: usize,
    finish_called: bool,
    got: Vec<u8>,
    peer_finished: bool,
    finished: bool,
    close_called: bool,
}

impl Side {
    fn new(out: Vec<u8>) -> Side {
        Side {
            out,
            sent: 0,
            finish_called: false,
            got: Vec::new(),
            peer_finished: false,
            finished: false,
            close_called: false,
        }
    }

    fn describe(&self) -> String {
        format!(
            "sent {}/{}, finish called {}, finished {}, got {}, peer finished {}, close called {}",
            self.sent,
            self.out.len(),
            self.finish_called,
            self.finished,
            self.got.len(),
            self.peer_finished,
            self.close_called
        )
    }

    /// Pushes what the node takes; finishes once all is taken; closes once both ends finished.
    fn step(&mut self, node: &mut Node, now: Instant, stream: StreamId) {
        while self.sent < self.out.len() {
            match node.send(now, stream, &self.out[self.sent..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.sent += n,
            }
        }
        if self.sent == self.out.len() && !self.finish_called {
            self.finish_called = true;
            node.finish(now, stream).expect("finish");
        }
        if self.finished && self.peer_finished && !self.close_called {
            self.close_called = true;
            node.close_stream(now, stream).expect("close_stream");
        }
    }

    /// Takes a stream event; `true` when it released the stream.
    fn on_event(
        &mut self,
        node: &mut Node,
        now: Instant,
        stream: StreamId,
        ev: &NodeEvent,
    ) -> bool {
        match ev {
            NodeEvent::Data { bytes, .. } => self.got.extend_from_slice(bytes),
            NodeEvent::PeerFinished { .. } => self.peer_finished = true,
            NodeEvent::Finished { .. } => self.finished = true,
            NodeEvent::StreamFailed { reason, .. } => panic!("{stream} failed: {reason}"),
            NodeEvent::StreamClosed { .. } => return true,
            _ => {}
        }
        self.step(node, now, stream);
        false
    }
}

fn stream_of(ev: &NodeEvent) -> Option<StreamId> {
    match ev {
        NodeEvent::Data { stream, .. }
        | NodeEvent::PeerFinished { stream }
        | NodeEvent::Finished { stream }
        | NodeEvent::Writable { stream }
        | NodeEvent::StreamFailed { stream, .. }
        | NodeEvent::StreamClosed { stream } => Some(*stream),
        _ => None,
    }
}

/// B's thread: the main thread asks it for counts, or to stop.
enum ToB {
    Counts(mpsc::Sender<Counts>),
    /// What B's open streams are waiting for (for a failure message).
    Describe(mpsc::Sender<String>),
    Stop,
}

enum FromB {
    Ready,
    /// Accepted stream `k` was released: its path and the bytes it got.
    Done {
        k: usize,
        path: Path,
        got: Vec<u8>,
    },
    /// B closed: `Closed` came (or not) and its counts after.
    Closed(bool, Counts),
}

fn run_b(mut rt: Runtime, mut node: Node, rx: mpsc::Receiver<ToB>, tx: mpsc::Sender<FromB>) {
    let mut streams: HashMap<StreamId, (usize, Path, Side)> = HashMap::new();
    let mut accepted = 0usize;
    let mut ready = false;
    loop {
        match rx.try_recv() {
            Ok(ToB::Counts(reply)) => {
                let _ = reply.send(counts(&rt, &node));
            }
            Ok(ToB::Describe(reply)) => {
                let text: Vec<String> = streams
                    .iter()
                    .map(|(id, (k, _, side))| {
                        format!(
                            "{id} (accept {k}): {}, queued {}, {:?}",
                            side.describe(),
                            node.queued(*id),
                            node.stream_socket(*id).map(|s| rt.unsent(s))
                        )
                    })
                    .collect();
                let _ = reply.send(format!(
                    "{text:?}; {:?}; runtime {:?}",
                    counts(&rt, &node),
                    rt.stats()
                ));
            }
            Ok(ToB::Stop) | Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        rt.run(
            &mut node,
            Some(Duration::from_millis(10)),
            |node, now, ev| {
                match &ev {
                    NodeEvent::Ready { .. } if !ready => {
                        ready = true;
                        let _ = tx.send(FromB::Ready);
                    }
                    NodeEvent::Accepted { stream, path, .. } => {
                        let mut side = Side::new(b_bytes(accepted));
                        side.step(node, now, *stream);
                        streams.insert(*stream, (accepted, *path, side));
                        accepted += 1;
                    }
                    _ => {
                        if let Some(s) = stream_of(&ev) {
                            let released = streams
                                .get_mut(&s)
                                .is_some_and(|(_, _, side)| side.on_event(node, now, s, &ev));
                            if released {
                                if let Some((k, path, side)) = streams.remove(&s) {
                                    let _ = tx.send(FromB::Done {
                                        k,
                                        path,
                                        got: side.got,
                                    });
                                }
                            }
                        }
                    }
                }
                ControlFlow::Continue(())
            },
        )
        .expect("B's runtime");
    }
    let closed = close(&mut rt, &mut node);
    let _ = tx.send(FromB::Closed(closed, counts(&rt, &node)));
}

/// Closes the node and runs it until `Closed` (5 s at most).
fn close(rt: &mut Runtime, node: &mut Node) -> bool {
    let now = rt.now();
    node.close(now);
    let mut closed = false;
    let _ = rt.run(node, Some(Duration::from_secs(5)), |_, _, ev| {
        if ev == NodeEvent::Closed {
            closed = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    closed
}

fn b_counts(to_b: &mpsc::Sender<ToB>) -> Counts {
    let (tx, rx) = mpsc::channel();
    to_b.send(ToB::Counts(tx)).expect("B is running");
    rx.recv_timeout(Duration::from_secs(5)).expect("B's counts")
}

/// Runs A until both nodes hold no connect, connection, punch or stream (2 s at most).
fn settle(rt: &mut Runtime, a: &mut Node, to_b: &mpsc::Sender<ToB>) -> (Counts, Counts) {
    let end = StdInstant::now() + Duration::from_secs(2);
    loop {
        rt.run(a, Some(Duration::from_millis(10)), |_, _, _| {
            ControlFlow::Continue(())
        })
        .expect("A's runtime");
        let (ca, cb) = (counts(rt, a), b_counts(to_b));
        if (ca.live == (0, 0, 0, 0) && cb.live == (0, 0, 0, 0)) || StdInstant::now() > end {
            return (ca, cb);
        }
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let i = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted[i]
}

#[derive(Debug)]
struct Checkpoint {
    fds: usize,
    heap: i64,
    rss_kib: u64,
    a: Counts,
    b: Counts,
}

#[test]
fn a_hundred_connects_by_name_on_real_sockets_leak_nothing() {
    let started = StdInstant::now();
    let Some(lab) = lab("node-soak") else {
        common::skip_or_fail("node_soak_real: mosquitto is not installed");
        return;
    };
    let key_a = lab.dir.identity_file("a.key", 0x81);
    let key_b = lab.dir.identity_file("b.key", 0x82);
    let (rt_b, node_b) = start_node(&lab.config, &key_b, Some(NAME), 0xb0b);
    let (to_b, b_rx) = mpsc::channel();
    let (b_tx, from_b) = mpsc::channel();
    let b_thread = std::thread::spawn(move || run_b(rt_b, node_b, b_rx, b_tx));
    let (mut rt, mut a) = start_node(&lab.config, &key_a, None, 0xa11ce);
    let mut a_ready = false;
    rt.run(&mut a, Some(Duration::from_secs(20)), |_, _, ev| {
        if matches!(ev, NodeEvent::Ready { .. }) {
            a_ready = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .expect("A's runtime");
    assert!(a_ready, "A never ready");
    match from_b.recv_timeout(Duration::from_secs(20)) {
        Ok(FromB::Ready) => {}
        _ => panic!("B never ready (registered)"),
    }
    let setup_time = started.elapsed();
    let fds_start = open_fds();
    let rss_start = rss_kib().unwrap_or(0);
    let heap_start = live_bytes();

    let target = Target::parse(NAME).expect("target");
    let mut connect_times = Vec::with_capacity(CONNECTS);
    let mut round_times = Vec::with_capacity(CONNECTS);
    let mut paths = Vec::with_capacity(CONNECTS);
    let mut warm = None;
    let mut unsettled = 0usize;
    let soak_start = StdInstant::now();
    for i in 0..CONNECTS {
        if let Some(wait) = (PACE * i as u32).checked_sub(soak_start.elapsed()) {
            std::thread::sleep(wait);
        }
        let t0 = StdInstant::now();
        let c = a.connect(rt.now(), target.clone()).expect("connect");
        let mut stream: Option<(StreamId, Side)> = None;
        let mut failed = None;
        let mut released = false;
        rt.run(&mut a, Some(Duration::from_secs(20)), |node, now, ev| {
            match &ev {
                NodeEvent::Connected {
                    connect,
                    stream: s,
                    path,
                    elapsed,
                    ..
                } if *connect == c => {
                    connect_times.push(*elapsed);
                    paths.push(*path);
                    let mut side = Side::new(a_bytes(i));
                    side.step(node, now, *s);
                    stream = Some((*s, side));
                }
                NodeEvent::ConnectFailed {
                    connect, phases, ..
                } if *connect == c => {
                    failed = Some(format!("{phases:?}"));
                    return ControlFlow::Break(());
                }
                _ => {
                    if let (Some(s), Some((ours, side))) = (stream_of(&ev), stream.as_mut()) {
                        if s == *ours && side.on_event(node, now, s, &ev) {
                            released = true;
                            return ControlFlow::Break(());
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        })
        .expect("A's runtime");
        if let Some(why) = failed {
            panic!("connect {i} failed: {why}");
        }
        assert!(released, "connect {i}: A's stream never released");
        let (_, side) = stream.expect("stream");
        assert!(
            side.got == b_bytes(i),
            "connect {i}: A got {} bytes, not B's",
            side.got.len()
        );
        let (k, path_b, got_b) = loop {
            match from_b.recv_timeout(Duration::from_secs(10)) {
                Ok(FromB::Done { k, path, got }) => break (k, path, got),
                Ok(_) => {}
                Err(e) => {
                    let (tx, rx) = mpsc::channel();
                    let _ = to_b.send(ToB::Describe(tx));
                    let b = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                    panic!(
                        "connect {i}: B's stream never released: {e}\nB: {b}\nA: {:?}",
                        counts(&rt, &a)
                    );
                }
            }
        };
        round_times.push(t0.elapsed());
        assert_eq!(k, i, "B's accepted streams follow the connects");
        assert!(
            got_b == a_bytes(i),
            "connect {i}: B got {} bytes, not A's",
            got_b.len()
        );
        assert_eq!(path_b, paths[i], "connect {i}: both sides see one path");
        let (ca, cb) = settle(&mut rt, &mut a, &to_b);
        if ca.live != (0, 0, 0, 0) || cb.live != (0, 0, 0, 0) {
            unsettled += 1;
        }
        if i + 1 == WARMUP {
            warm = Some(Checkpoint {
                fds: open_fds(),
                heap: live_bytes(),
                rss_kib: rss_kib().unwrap_or(0),
                a: ca,
                b: cb,
            });
        }
    }
    let (ca, cb) = settle(&mut rt, &mut a, &to_b);
    let end = Checkpoint {
        fds: open_fds(),
        heap: live_bytes(),
        rss_kib: rss_kib().unwrap_or(0),
        a: ca,
        b: cb,
    };
    let warm = warm.expect("warm-up checkpoint");
    let soak_time = started.elapsed() - setup_time;

    connect_times.sort();
    round_times.sort();
    eprintln!(
        "node soak: {CONNECTS} connects by name, path {:?}, setup {setup_time:.2?}, soak {soak_time:.2?}\n\
         connect (Connected.elapsed): median {:.2?}, p99 {:.2?}, max {:.2?}\n\
         round (connect + exchange + close both ends): median {:.2?}, p99 {:.2?}, max {:.2?}\n\
         fds: start {fds_start}, after {WARMUP} {}, after {CONNECTS} {}\n\
         RSS KiB: start {rss_start}, after {WARMUP} {}, after {CONNECTS} {}\n\
         live heap bytes: start {heap_start}, after {WARMUP} {}, after {CONNECTS} {}\n\
         A after {WARMUP}: {:?}\nA after {CONNECTS}: {:?}\n\
         B after {WARMUP}: {:?}\nB after {CONNECTS}: {:?}\n\
         rounds that did not settle within 2 s: {unsettled}",
        paths[0],
        percentile(&connect_times, 50),
        percentile(&connect_times, 99),
        connect_times[CONNECTS - 1],
        percentile(&round_times, 50),
        percentile(&round_times, 99),
        round_times[CONNECTS - 1],
        warm.fds,
        end.fds,
        warm.rss_kib,
        end.rss_kib,
        warm.heap,
        end.heap,
        warm.a,
        end.a,
        warm.b,
        end.b,
    );

    assert!(
        paths.iter().all(|p| *p == paths[0]),
        "one path for all: {paths:?}"
    );
    assert_eq!(paths[0], Path::Direct, "loopback is open: direct");
    for (who, w, e) in [("A", warm.a, end.a), ("B", warm.b, end.b)] {
        assert_eq!(e.live, (0, 0, 0, 0), "{who}: nothing alive at the end");
        assert_eq!(w.live, (0, 0, 0, 0), "{who}: nothing alive after warm-up");
        assert_eq!(e.node_sockets, w.node_sockets, "{who}: node sockets flat");
        assert_eq!(e.rt_sockets, w.rt_sockets, "{who}: runtime sockets flat");
        assert!(
            e.rt_slots <= w.rt_slots + 2,
            "{who}: runtime slots flat: {w:?} -> {e:?}"
        );
    }
    assert!(
        end.fds <= warm.fds + FD_SLACK,
        "open fds grew: {} -> {}",
        warm.fds,
        end.fds
    );
    assert!(
        end.rss_kib <= warm.rss_kib + RSS_SLACK_KIB,
        "RSS grew: {} KiB -> {} KiB",
        warm.rss_kib,
        end.rss_kib
    );

    assert!(
        end.heap <= warm.heap + HEAP_SLACK,
        "live heap grew: {} -> {} bytes",
        warm.heap,
        end.heap
    );

    // Both close cleanly and release every socket.
    let a_closed = close(&mut rt, &mut a);
    assert!(a_closed, "A: no Closed");
    assert_eq!(rt.open_sockets(), 0, "A's runtime after close");
    to_b.send(ToB::Stop).expect("B is running");
    let b_end = loop {
        match from_b.recv_timeout(Duration::from_secs(10)) {
            Ok(FromB::Closed(closed, counts)) => break (closed, counts),
            Ok(_) => {}
            Err(e) => panic!("B never closed: {e}"),
        }
    };
    b_thread.join().expect("B's thread");
    assert!(b_end.0, "B: no Closed");
    assert_eq!(b_end.1.rt_sockets, 0, "B's runtime after close");
    eprintln!("node soak: total {:.2?}", started.elapsed());
}
