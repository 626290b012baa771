//! TCP streams in the runtime: connect progress, reading, the write queue with its refusals and
//! `Writable`, the half-close, and streams that linger after a close to write their last bytes.

use super::*;

impl Runtime {
    /// Drops lingering streams whose time is up; the earliest deadline of those left.
    pub(super) fn expire_lingering(
        &mut self,
        wall: std::time::Instant,
    ) -> Option<std::time::Instant> {
        if self.lingering == 0 {
            return None;
        }
        let mut earliest: Option<std::time::Instant> = None;
        for idx in 0..self.slots.len() {
            let until = match self.slots.get(idx) {
                Some(Some(Entry {
                    kind: Kind::Lingering(_, until),
                    ..
                })) => *until,
                _ => continue,
            };
            if until <= wall {
                self.drop_lingering(idx);
            } else {
                earliest = Some(earliest.map_or(until, |e| e.min(until)));
            }
        }
        earliest
    }
    /// Writes what a lingering stream still holds; once it is all written, the FIN, and the slot
    /// is free.
    pub(super) fn flush_lingering(&mut self, idx: usize) {
        let Some(Some(Entry {
            kind: Kind::Lingering(st, _),
            ..
        })) = self.slots.get_mut(idx)
        else {
            return;
        };
        match write_some(&mut st.stream, &st.out) {
            Ok(n) => {
                st.out.drain(..n.min(st.out.len()));
                self.stats.bytes_sent = self
                    .stats
                    .bytes_sent
                    .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                if st.out.is_empty() {
                    let _ = st.stream.shutdown(std::net::Shutdown::Write);
                    self.drop_lingering(idx);
                }
            }
            // The peer is gone: nothing more can be delivered.
            Err(_) => self.drop_lingering(idx),
        }
    }
    pub(super) fn drop_lingering(&mut self, idx: usize) {
        if let Some(Some(Entry {
            kind: Kind::Lingering(mut st, _),
            ..
        })) = self.slots.get_mut(idx).map(Option::take)
        {
            let _ = self.poll.registry().deregister(&mut st.stream);
            self.lingering = self.lingering.saturating_sub(1);
            self.free.push(idx);
        }
    }
    /// Advances TCP stream `idx`: completes a connect, flushes queued bytes, reads until
    /// `WouldBlock` (handing each chunk to `handle_stream`), reports EOF as `PeerClosed`.
    pub(super) fn service_stream<M, F>(
        &mut self,
        machine: &mut M,
        idx: usize,
        on_event: &mut F,
    ) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        // Connection progress.
        let Some((id, st)) = stream_at(&mut self.slots, idx) else {
            return ReadEnd::Done;
        };
        if !st.connected {
            if st.read_closed {
                return ReadEnd::Done;
            }
            let outcome = match connect_progress(&st.stream) {
                Progress::Pending => return ReadEnd::Done,
                Progress::Connected(local) => {
                    st.connected = true;
                    SocketOutcome::Connected {
                        local,
                        remote: st.remote,
                    }
                }
                Progress::Failed(error) => {
                    st.read_closed = true;
                    SocketOutcome::Failed {
                        op: OpKind::Connect,
                        destination: Some(st.remote),
                        error,
                    }
                }
            };
            if let SocketOutcome::Failed { .. } = outcome {
                self.stats.op_failures = self.stats.op_failures.saturating_add(1);
            }
            self.report(id, outcome);
            if self.drain(machine, on_event).is_break() {
                return ReadEnd::Break;
            }
        }
        self.flush_stream(idx);

        let mut reads = 0usize;
        loop {
            let Some((id, st)) = stream_at(&mut self.slots, idx) else {
                return ReadEnd::Done;
            };
            if !st.connected || st.read_closed {
                return ReadEnd::Done;
            }
            let result = io::Read::read(&mut st.stream, &mut self.recv_buf);
            match result {
                Ok(0) => {
                    st.read_closed = true;
                    self.report(id, SocketOutcome::PeerClosed);
                    return match self.drain(machine, on_event) {
                        ControlFlow::Break(()) => ReadEnd::Break,
                        ControlFlow::Continue(()) => ReadEnd::Done,
                    };
                }
                Ok(n) => {
                    self.stats.bytes_received = self
                        .stats
                        .bytes_received
                        .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    let now = self.now();
                    let data = self.recv_buf.get(..n).unwrap_or(&[]);
                    self.count_verdict(machine.handle_stream(now, id, data));
                    if self.drain(machine, on_event).is_break() {
                        return ReadEnd::Break;
                    }
                    reads = reads.saturating_add(1);
                    if reads >= MAX_READS_PER_WAKEUP {
                        return ReadEnd::More;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    st.read_closed = true;
                    self.stats.receive_errors = self.stats.receive_errors.saturating_add(1);
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Receive,
                        destination: None,
                        error: map_io_error(&e),
                    };
                    self.report(id, outcome);
                    return match self.drain(machine, on_event) {
                        ControlFlow::Break(()) => ReadEnd::Break,
                        ControlFlow::Continue(()) => ReadEnd::Done,
                    };
                }
            }
        }
    }
    /// Writes as much of stream `idx`'s queued bytes as the kernel takes; a write error is
    /// reported as a failed send and drops the queue.
    pub(super) fn flush_stream(&mut self, idx: usize) {
        let Some((id, st)) = stream_at(&mut self.slots, idx) else {
            return;
        };
        if !st.connected {
            return;
        }
        if st.out.is_empty() {
            if st.refused {
                st.refused = false;
                self.report(id, SocketOutcome::Writable);
            }
            return;
        }
        let result = write_some(&mut st.stream, &st.out);
        let written_all = matches!(result, Ok(n) if n >= st.out.len());
        let written = match result {
            Ok(n) => n,
            Err(error) => {
                st.out.clear();
                let destination = Some(st.remote);
                self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                let outcome = SocketOutcome::Failed {
                    op: OpKind::Send,
                    destination,
                    error,
                };
                self.report(id, outcome);
                return;
            }
        };
        st.out.drain(..written.min(st.out.len()));
        let writable = st.refused && st.out.len() <= MAX_STREAM_BUFFER / 2;
        if writable {
            st.refused = false;
        }
        let finish = written_all && st.shutdown == Shutdown::Pending;
        self.stats.bytes_sent = self
            .stats
            .bytes_sent
            .saturating_add(u64::try_from(written).unwrap_or(u64::MAX));
        if writable {
            self.report(id, SocketOutcome::Writable);
        }
        if finish {
            // Everything handed over before the `Shutdown` is written: now the FIN.
            self.shutdown_now(idx);
        }
    }
    /// Carries out [`SocketOp::Shutdown`] on socket `id`: at once if nothing is queued for it,
    /// else once the queue is written ([`Runtime::flush_stream`]).
    pub(super) fn shutdown(&mut self, id: SocketId) {
        let Some(&idx) = self.ids.get(&id) else {
            self.fail(id, OpKind::Shutdown, IoError::UnknownSocket);
            return;
        };
        let Some((_, st)) = stream_at(&mut self.slots, idx) else {
            self.fail(id, OpKind::Shutdown, IoError::NotConnected);
            return;
        };
        if !st.connected {
            self.fail(id, OpKind::Shutdown, IoError::NotConnected);
            return;
        }
        if st.shutdown != Shutdown::No {
            return;
        }
        if st.out.is_empty() {
            self.shutdown_now(idx);
        } else {
            st.shutdown = Shutdown::Pending;
        }
    }
    /// Shuts down the sending half of stream slot `idx` now; a failure is reported.
    pub(super) fn shutdown_now(&mut self, idx: usize) {
        let Some((id, st)) = stream_at(&mut self.slots, idx) else {
            return;
        };
        st.shutdown = Shutdown::Done;
        if let Err(e) = st.stream.shutdown(std::net::Shutdown::Write) {
            self.fail(id, OpKind::Shutdown, map_io_error(&e));
        }
    }
}

/// The TCP stream in slot `idx` and its socket id, if the slot holds one (a function of the slots
/// alone, so the caller may still use the runtime's other fields while it holds the stream).
fn stream_at(slots: &mut [Option<Entry>], idx: usize) -> Option<(SocketId, &mut Stream)> {
    match slots.get_mut(idx) {
        Some(Some(Entry {
            id,
            kind: Kind::TcpStream(st),
            ..
        })) => Some((*id, st)),
        _ => None,
    }
}

/// Whether a non-blocking `connect` error only means "in progress".
pub(super) fn connect_in_progress(e: &io::Error) -> bool {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        return true;
    }
    e.kind() == io::ErrorKind::WouldBlock
}

/// Where a connecting stream stands, after it became writable (or readable).
pub(super) fn connect_progress(stream: &mio::net::TcpStream) -> Progress {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Progress::Failed(map_io_error(&e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => match stream.local_addr() {
            Ok(local) => Progress::Connected(local),
            Err(e) => Progress::Failed(map_io_error(&e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Progress::Pending,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Progress::Pending,
        Err(e) => Progress::Failed(map_io_error(&e)),
    }
}

/// Writes as much of `bytes` as the kernel takes without blocking.
pub(super) fn write_some(stream: &mut mio::net::TcpStream, bytes: &[u8]) -> Result<usize, IoError> {
    let mut written = 0usize;
    while let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
        match io::Write::write(stream, rest) {
            Ok(0) => return Err(IoError::ConnectionReset),
            Ok(n) => written = written.saturating_add(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io_error(&e)),
        }
    }
    Ok(written)
}

/// Sends `bytes` on a stream: written at once if nothing is queued, the rest queued (whole or not
/// at all, within [`MAX_STREAM_BUFFER`]). Returns how many bytes were written at once.
pub(super) fn stream_send(st: &mut Stream, bytes: &[u8]) -> Result<usize, IoError> {
    if !st.connected {
        return Err(IoError::NotConnected);
    }
    if st.shutdown != Shutdown::No {
        return Err(IoError::BrokenPipe);
    }
    if st.refused || st.out.len().saturating_add(bytes.len()) > MAX_STREAM_BUFFER {
        st.refused = true;
        return Err(IoError::WouldBlock);
    }
    let written = if st.out.is_empty() {
        write_some(&mut st.stream, bytes)?
    } else {
        0
    };
    st.out
        .extend_from_slice(bytes.get(written..).unwrap_or(&[]));
    Ok(written)
}
