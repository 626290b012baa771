//! One stream carried to stdin/stdout, like netcat: `p2pd node` takes the first accepted stream,
//! `p2pd connect` its own. At stdin's EOF only our sending side is finished (the peer reads every
//! byte, then EOF); the command ends once the peer has finished too, or the stream failed.

use std::io::Write;
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use crate::commands::stdin_relay;
use p2pd_mio::Runtime;
use p2pd_node::{Node, NodeEvent, StreamId};
use p2pd_proto::Instant;

use super::health::NodeHealth;
use super::status::{PhaseLine, Status};
use super::Mode;

/// A progress line this often while a connect runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    ready: bool,
    connect_started: Option<Instant>,
    stream: Option<StreamId>,
    phase: &'static str,
    last_progress: Option<Instant>,
    pending: Vec<u8>,
    stdin_done: bool,
    finished: bool,
    /// Our FINISH (and every byte before it) went to the runtime ([`NodeEvent::Finished`]):
    /// closing now loses nothing (on a relayed stream the node lingers as long as it must).
    sent_all: bool,
    peer_done: bool,
    closing: bool,
    closed: bool,
    failed: bool,
    target: String,
}

impl State {
    fn close(&mut self, node: &mut Node, now: Instant) {
        if !self.closing {
            self.closing = true;
            node.close(now);
        }
    }
}

/// Runs the loop; the exit code.
pub fn pipe(
    mut rt: Runtime,
    mut node: Node,
    status: Status,
    mut health: NodeHealth,
    mode: Mode,
) -> Result<i32, String> {
    let waker = rt.waker().map_err(|e| format!("runtime: {e}"))?;
    let rx = stdin_relay::spawn_reader(waker);
    let (mut target, timeout) = match mode {
        Mode::Listen => (None, Duration::MAX),
        Mode::Connect { target, timeout } => (Some(target), timeout),
    };
    let mut state = State {
        phase: "resolve",
        target: target.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        ..State::default()
    };
    let listening = target.is_none();
    let began = rt.now();
    let mut stdout = std::io::stdout();
    loop {
        let now = rt.now();
        if state.ready && state.connect_started.is_none() && !state.closing {
            if let Some(t) = target.take() {
                node.connect(now, t).map_err(|e| e.to_string())?;
                state.connect_started = Some(now);
                state.last_progress = Some(now);
            }
        }
        if !listening
            && state.stream.is_none()
            && !state.closing
            && now.saturating_duration_since(began) >= timeout
        {
            status.reason(
                "failed",
                format!("cannot connect to {}: timed out", state.target),
                "timeout".into(),
            );
            state.failed = true;
            state.close(&mut node, now);
        }
        if let (Some(started), None) = (state.connect_started, state.stream) {
            if !state.closing
                && state
                    .last_progress
                    .is_some_and(|t| now.saturating_duration_since(t) >= PROGRESS_EVERY)
            {
                state.last_progress = Some(now);
                status.progress(
                    &state.target,
                    state.phase,
                    now.saturating_duration_since(started).as_millis(),
                );
            }
        }
        feed(&mut node, &mut state, &rx, now);
        if state.peer_done && !state.closing && (state.sent_all || state.failed) {
            state.close(&mut node, now);
        }
        let flow = rt.drive(&mut node, |node, now, ev| {
            health.on_event(now.saturating_duration_since(began), &ev);
            on_event(node, now, ev, &status, &mut state, &mut stdout, listening)
        });
        if state.closed {
            break;
        }
        if flow.is_break() {
            continue;
        }
        // While connecting (or waiting to be ready to), wake up for progress lines and the
        // timeout.
        let limit = (!listening && state.stream.is_none() && !state.closing).then(|| {
            let left = timeout.saturating_sub(rt.now().saturating_duration_since(began));
            left.min(PROGRESS_EVERY)
        });
        rt.run(&mut node, limit, |node, now, ev| {
            health.on_event(now.saturating_duration_since(began), &ev);
            on_event(node, now, ev, &status, &mut state, &mut stdout, listening)
        })
        .map_err(|e| format!("event loop: {e}"))?;
        if state.closed {
            break;
        }
    }
    stdin_relay::linger(&mut rt, &mut node);
    let _ = stdout.flush();
    Ok(if state.failed || state.stream.is_none() {
        1
    } else {
        0
    })
}

/// Hands stdin to the stream while its send buffer takes it; finishes at stdin's EOF.
fn feed(node: &mut Node, state: &mut State, rx: &mpsc::Receiver<Option<Vec<u8>>>, now: Instant) {
    let Some(stream) = state.stream.filter(|_| !state.closing && !state.failed) else {
        return;
    };
    while !state.finished {
        if state.pending.is_empty() {
            match rx.try_recv() {
                Ok(Some(bytes)) => state.pending = bytes,
                Ok(None) => state.stdin_done = true,
                Err(_) => {}
            }
        }
        if state.pending.is_empty() {
            break;
        }
        match node.send(now, stream, &state.pending) {
            Ok(taken) if taken > 0 => {
                state.pending.drain(..taken);
            }
            _ => break,
        }
    }
    if state.stdin_done && state.pending.is_empty() && !state.finished {
        state.finished = true;
        let _ = node.finish(now, stream);
    }
}

fn on_event(
    node: &mut Node,
    now: Instant,
    ev: NodeEvent,
    status: &Status,
    state: &mut State,
    stdout: &mut std::io::Stdout,
    listening: bool,
) -> ControlFlow<()> {
    match ev {
        NodeEvent::Ready { name, address, nat } => {
            status.ready(name.as_ref().map(|n| n.as_str()), &address, nat.as_ref());
            state.ready = true;
            return ControlFlow::Break(());
        }
        NodeEvent::RegistrationFailed { server, reason } => {
            status.reason(
                "registration_failed",
                format!("PNP server {server}: registration failed: {reason} (retrying)"),
                reason.to_string(),
            );
        }
        NodeEvent::RelayFailed {
            relay,
            failure,
            next,
            ..
        } => status.relay_failed(relay, &failure, next),
        NodeEvent::Progress { phase, .. } => state.phase = phase.as_str(),
        NodeEvent::Accepted {
            stream,
            peer,
            path,
            remote,
        } => {
            if listening && state.stream.is_none() && !state.closing {
                state.stream = Some(stream);
                status.accepted(&peer, path.as_str(), remote);
                return ControlFlow::Break(());
            }
            // One stream at a time: later ones are refused.
            let _ = node.close_stream(now, stream);
        }
        NodeEvent::Connected {
            stream,
            peer,
            path,
            elapsed,
            phases,
            remote,
            ..
        } => {
            state.stream = Some(stream);
            let lines = phases.iter().map(PhaseLine::of).collect();
            status.connected(
                &state.target,
                &peer,
                path.as_str(),
                remote,
                elapsed.as_millis(),
                lines,
            );
            return ControlFlow::Break(());
        }
        NodeEvent::ConnectFailed {
            elapsed, phases, ..
        } => {
            let lines = phases.iter().map(PhaseLine::of).collect();
            status.failed(&state.target, elapsed.as_millis(), lines);
            state.failed = true;
            state.close(node, now);
        }
        NodeEvent::Data { stream, bytes } if Some(stream) == state.stream => {
            if let Err(e) = stdout.write_all(&bytes).and_then(|()| stdout.flush()) {
                crate::output::stdout_failed(&e);
                state.close(node, now);
            }
        }
        NodeEvent::StreamFailed { stream, reason } if Some(stream) == state.stream => {
            status.reason(
                "stream_failed",
                format!("the secure stream failed: {reason}"),
                reason.to_string(),
            );
            state.failed = true;
        }
        NodeEvent::PeerFinished { stream } if Some(stream) == state.stream => {
            state.peer_done = true;
            return ControlFlow::Break(());
        }
        NodeEvent::Finished { stream } => {
            state.sent_all |= Some(stream) == state.stream;
            return ControlFlow::Break(());
        }
        NodeEvent::Writable { .. } => return ControlFlow::Break(()),
        NodeEvent::Closed => {
            state.closed = true;
            return ControlFlow::Break(());
        }
        _ => {}
    }
    ControlFlow::Continue(())
}
