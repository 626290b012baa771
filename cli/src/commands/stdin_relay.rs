//! What the netcat-like commands (`p2pd punch`, `p2pd node`, `p2pd connect`) share around their
//! event loop: stdin read on a thread that wakes the loop, and the end of a run that lets a
//! finished stream write its last bytes.

use std::io::Read;
use std::ops::ControlFlow;
use std::sync::mpsc;

use p2pd_mio::{RunEnd, Runtime, Waker};
use p2pd_proto::Machine;

/// stdin chunks (16 KiB each) the reader thread may have waiting.
pub const STDIN_CHUNKS: usize = 4;

/// Reads stdin on a thread: each chunk (`None` at EOF or an error) arrives on the returned
/// channel and wakes the loop. The channel is bounded and drained only while the stream takes
/// bytes, so a slow peer holds stdin back instead of the whole input piling up in memory.
pub fn spawn_reader(waker: Waker) -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(STDIN_CHUNKS);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let (msg, last) = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => (None, true),
                Ok(n) => (Some(buf.get(..n).unwrap_or_default().to_vec()), false),
            };
            if tx.send(msg).is_err() || waker.wake().is_err() || last {
                return;
            }
        }
    });
    rx
}

/// After the machine closed: a finished stream may still be writing its last bytes (the runtime
/// lingers, bounded by [`p2pd_mio::LINGER`]); wait for them before the process ends. A wake-up
/// left over from the stdin thread ends `run` early, so only idle (or the limit) ends this.
pub fn linger<M: Machine>(rt: &mut Runtime, machine: &mut M) {
    let end = std::time::Instant::now() + p2pd_mio::LINGER;
    while let Ok(RunEnd::Woken) = rt.run(
        machine,
        Some(end.saturating_duration_since(std::time::Instant::now())),
        |_, _, _| ControlFlow::Continue(()),
    ) {}
}
