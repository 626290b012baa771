//! Sending: UDP datagrams batched per socket (sent in as few calls as the kernel allows), received
//! batches handed to the machine, and every transmit routed to its socket.

use super::*;

impl Runtime {
    /// Reads datagrams from slot `idx` until `WouldBlock`, a batch at a time, handing each to the
    /// machine and draining after each. Transmits produced while a batch is handed over are sent
    /// together once the batch is done.
    pub(super) fn read_udp<M, F>(
        &mut self,
        machine: &mut M,
        idx: usize,
        on_event: &mut F,
    ) -> ReadEnd
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        let mut reads = 0usize;
        let mut errors = 0usize;
        loop {
            // Datagrams read earlier from this socket (by the last call, or by a run the callback
            // stopped in the middle of a batch).
            if self.rx.has_pending() {
                let Some((owner, serial)) = self.rx_owner else {
                    self.rx.clear();
                    continue;
                };
                if owner != idx {
                    // Not this socket's: `run` hands those over first, so this is not expected.
                    return ReadEnd::More;
                }
                match self.hand_over(machine, idx, serial, on_event) {
                    ControlFlow::Break(_) => return ReadEnd::Break,
                    ControlFlow::Continue(n) => reads = reads.saturating_add(n),
                }
                // The batch is done: send what it produced (and report any send failure).
                if self.drain(machine, on_event).is_break() {
                    return ReadEnd::Break;
                }
                if reads >= MAX_READS_PER_WAKEUP {
                    return ReadEnd::More;
                }
            }
            // The socket may have been closed (or its slot reused) by the last drain.
            let Some(Some(entry)) = self.slots.get(idx) else {
                return ReadEnd::Done;
            };
            let (id, serial) = (entry.id, entry.serial);
            let result = match &entry.kind {
                Kind::Udp(sock) => self.rx.recv(sock),
                _ => return ReadEnd::Done,
            };
            match result {
                Ok(_) => {
                    errors = 0;
                    self.rx_owner = Some((idx, serial));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // For example ECONNREFUSED from an ICMP port unreachable: report, keep reading.
                    self.stats.receive_errors = self.stats.receive_errors.saturating_add(1);
                    let now = self.now();
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Receive,
                        destination: None,
                        error: map_io_error(&e),
                    };
                    machine.handle_socket_result(now, id, outcome);
                    if self.drain(machine, on_event).is_break() {
                        return ReadEnd::Break;
                    }
                    errors = errors.saturating_add(1);
                    if errors >= MAX_RECV_ERRORS_PER_WAKEUP {
                        return ReadEnd::Done;
                    }
                }
            }
        }
    }
    /// Hands the datagrams waiting in `rx` to the machine, draining after each but deferring the
    /// sends. Stops with `Break` when the callback does (the rest stays in `rx`). Datagrams of a
    /// socket that was closed meanwhile are dropped, as the kernel drops those it still held.
    /// Returns how many datagrams were handed over.
    pub(super) fn hand_over<M, F>(
        &mut self,
        machine: &mut M,
        idx: usize,
        serial: u64,
        on_event: &mut F,
    ) -> ControlFlow<usize, usize>
    where
        M: Machine,
        F: FnMut(&mut M, Instant, M::Event) -> ControlFlow<()>,
    {
        let mut handed = 0usize;
        loop {
            let id = match self.slots.get(idx) {
                Some(Some(entry)) if entry.serial == serial => entry.id,
                _ => {
                    self.rx.clear();
                    return ControlFlow::Continue(handed);
                }
            };
            let now = self.now();
            let Some((from, data)) = self.rx.pop() else {
                return ControlFlow::Continue(handed);
            };
            let Some(from) = from else {
                // Not an IP sender: nothing the machine could answer.
                continue;
            };
            let n = data.len();
            let verdict = machine.handle_datagram(now, id, from, data);
            handed = handed.saturating_add(1);
            self.stats.datagrams_received = self.stats.datagrams_received.saturating_add(1);
            self.stats.bytes_received = self
                .stats
                .bytes_received
                .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            self.count_verdict(verdict);
            if self.drain_deferred(machine, on_event).is_break() {
                return ControlFlow::Break(handed);
            }
        }
    }
    /// Sends the send batch in as few calls as the kernel allows, in order. A datagram the kernel
    /// refuses is reported as a failed send (queued) and the rest are still sent.
    pub(super) fn flush_sends(&mut self) {
        let Some((idx, socket)) = self.tx_owner.take() else {
            self.tx.clear();
            return;
        };
        let count = self.tx.len();
        let mut i = 0usize;
        while i < count {
            let result = match self.slots.get(idx) {
                Some(Some(Entry {
                    id,
                    kind: Kind::Udp(sock),
                    ..
                })) if *id == socket => self.tx.send(sock, i).map_err(|e| {
                    if e.kind() == io::ErrorKind::Interrupted {
                        None
                    } else {
                        Some(map_io_error(&e))
                    }
                }),
                // Not expected: sockets are closed only after a flush.
                _ => Err(Some(IoError::UnknownSocket)),
            };
            match result {
                Ok(n) => {
                    let sent = i.saturating_add(n).min(count);
                    for j in i..sent {
                        let len = u64::try_from(self.tx.sent_len(j)).unwrap_or(u64::MAX);
                        self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
                        self.stats.bytes_sent = self.stats.bytes_sent.saturating_add(len);
                    }
                    i = sent;
                }
                // Interrupted: try the same datagram again.
                Err(None) => {}
                Err(Some(error)) => {
                    self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                    if let Some(destination) = self.tx.destination(i) {
                        let outcome = SocketOutcome::Failed {
                            op: OpKind::Send,
                            destination: Some(destination),
                            error,
                        };
                        self.report(socket, outcome);
                    }
                    i = i.saturating_add(1);
                }
            }
        }
        self.tx.clear();
    }
    /// Sends one transmit (a datagram, or bytes on a connected TCP stream); failures are queued
    /// for the machine.
    pub(super) fn send(&mut self, t: Transmit, payload: &[u8]) {
        let destination = t.destination;
        let idx = self.ids.get(&t.socket).copied();
        // A datagram joins the send batch (sent first if it is full or for another socket).
        let udp = idx.filter(|&i| {
            t.len <= payload.len()
                && matches!(
                    self.slots.get(i),
                    Some(Some(Entry {
                        kind: Kind::Udp(_),
                        ..
                    }))
                )
        });
        if let Some(i) = udp {
            if self.tx.is_full() || self.tx_owner.is_some_and(|(owner, _)| owner != i) {
                self.flush_sends();
            }
            self.tx
                .push(payload.get(..t.len).unwrap_or_default(), destination);
            self.tx_owner = Some((i, t.socket));
            return;
        }
        // Anything else is handled at once, after the datagrams before it.
        self.flush_sends();
        let mut datagram = false;
        let result = match payload.get(..t.len) {
            None => Err(IoError::MessageTooLong),
            Some(bytes) => match idx.and_then(|i| self.slots.get_mut(i)) {
                Some(Some(entry)) => match &mut entry.kind {
                    Kind::Udp(sock) => {
                        datagram = true;
                        send_to(sock, bytes, destination)
                    }
                    Kind::TcpStream(st) => stream_send(st, bytes),
                    Kind::TcpBound(_) | Kind::TcpListener(_) | Kind::Lingering(..) => {
                        Err(IoError::NotConnected)
                    }
                },
                _ => Err(IoError::UnknownSocket),
            },
        };
        match result {
            Ok(n) => {
                if datagram {
                    self.stats.datagrams_sent = self.stats.datagrams_sent.saturating_add(1);
                }
                self.stats.bytes_sent = self
                    .stats
                    .bytes_sent
                    .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
            }
            Err(error) => {
                self.stats.send_errors = self.stats.send_errors.saturating_add(1);
                let outcome = SocketOutcome::Failed {
                    op: OpKind::Send,
                    destination: Some(destination),
                    error,
                };
                self.report(t.socket, outcome);
            }
        }
    }
}

/// `send_to`, retried on `EINTR`.
pub(super) fn send_to(
    sock: &mio::net::UdpSocket,
    bytes: &[u8],
    to: SocketAddr,
) -> Result<usize, IoError> {
    loop {
        match sock.send_to(bytes, to) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_io_error(&e)),
        }
    }
}
