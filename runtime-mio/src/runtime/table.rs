//! The socket table: carrying out the machine's intents (bind, connect, listen, accept, TTL,
//! close), the outcomes owed to it, and looking sockets up by the machine's id.

use super::*;

impl Runtime {
    /// Carries out one socket intent; outcomes are queued for the machine.
    pub(super) fn apply(&mut self, op: SocketOp) {
        match op {
            SocketOp::Bind {
                socket,
                transport,
                local,
                options,
            } => match self.bind(socket, transport, local, options) {
                Ok(local) => self.report(socket, SocketOutcome::Bound { local }),
                Err(error) => self.fail(socket, OpKind::Bind, error),
            },
            SocketOp::SetTtl { socket, ttl } => {
                if let Err(error) = self.set_ttl(socket, ttl) {
                    self.fail(socket, OpKind::SetTtl, error);
                }
            }
            SocketOp::Close { socket } => self.close(socket),
            SocketOp::Shutdown { socket } => self.shutdown(socket),
            SocketOp::Connect { socket, remote } => {
                if let Err(error) = self.connect(socket, remote) {
                    self.stats.op_failures = self.stats.op_failures.saturating_add(1);
                    let outcome = SocketOutcome::Failed {
                        op: OpKind::Connect,
                        destination: Some(remote),
                        error,
                    };
                    self.report(socket, outcome);
                }
            }
            SocketOp::Listen { socket, backlog } => {
                if let Err(error) = self.listen(socket, backlog) {
                    self.fail(socket, OpKind::Listen, error);
                }
            }
            SocketOp::Accept { listener, socket } => match self.queue_accept(listener, socket) {
                Ok(idx) => self.accept_waiting(idx),
                Err(error) => self.fail(socket, OpKind::Accept, error),
            },
            // An intent this runtime does not know yet: nothing sensible to report it as.
            _ => {
                self.stats.op_failures = self.stats.op_failures.saturating_add(1);
            }
        }
    }
    /// Starts a non-blocking connect on bound TCP socket `id`; completion is reported when the
    /// stream becomes writable.
    pub(super) fn connect(&mut self, id: SocketId, remote: SocketAddr) -> Result<(), IoError> {
        let idx = *self.ids.get(&id).ok_or(IoError::UnknownSocket)?;
        let slot = self.slots.get_mut(idx).ok_or(IoError::UnknownSocket)?;
        let Some(Entry {
            kind: Kind::TcpBound(_),
            ..
        }) = slot
        else {
            // Not a bound TCP socket (UDP, already connecting, listening).
            return Err(IoError::Other(None));
        };
        let Some(mut entry) = slot.take() else {
            return Err(IoError::UnknownSocket);
        };
        let sock = match entry.kind {
            Kind::TcpBound(sock) => sock,
            other => {
                entry.kind = other;
                *slot = Some(entry);
                return Err(IoError::Other(None));
            }
        };
        let started = match sock.connect(&remote.into()) {
            Ok(()) => Ok(()),
            Err(e) if connect_in_progress(&e) => Ok(()),
            Err(e) => Err(map_io_error(&e)),
        };
        if let Err(error) = started {
            // The socket stays bound; the machine decides whether to close it.
            entry.kind = Kind::TcpBound(sock);
            *slot = Some(entry);
            return Err(error);
        }
        let mut stream = mio::net::TcpStream::from_std(std::net::TcpStream::from(sock));
        let registered = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        );
        let failed = registered.err().map(|e| map_io_error(&e));
        entry.kind = Kind::TcpStream(Stream {
            stream,
            remote,
            connected: false,
            read_closed: failed.is_some(),
            out: Vec::new(),
            shutdown: Shutdown::No,
            refused: false,
        });
        *slot = Some(entry);
        failed.map_or(Ok(()), Err)
    }
    /// Makes bound TCP socket `id` listen.
    pub(super) fn listen(&mut self, id: SocketId, backlog: u32) -> Result<(), IoError> {
        let idx = *self.ids.get(&id).ok_or(IoError::UnknownSocket)?;
        let slot = self.slots.get_mut(idx).ok_or(IoError::UnknownSocket)?;
        let Some(Entry {
            kind: Kind::TcpBound(sock),
            ..
        }) = slot
        else {
            return Err(IoError::Other(None));
        };
        sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(|e| map_io_error(&e))?;
        let Some(mut entry) = slot.take() else {
            return Err(IoError::UnknownSocket);
        };
        let mut registered = Ok(());
        entry.kind = match entry.kind {
            Kind::TcpBound(sock) => {
                let mut listener =
                    mio::net::TcpListener::from_std(std::net::TcpListener::from(sock));
                registered =
                    self.poll
                        .registry()
                        .register(&mut listener, Token(idx), Interest::READABLE);
                Kind::TcpListener(Listener {
                    listener,
                    waiting: VecDeque::new(),
                })
            }
            other => other,
        };
        *slot = Some(entry);
        registered.map_err(|e| map_io_error(&e))
    }
    /// Records that the next connection on `listener` is to be named `socket`; returns the
    /// listener's slot.
    pub(super) fn queue_accept(
        &mut self,
        listener: SocketId,
        socket: SocketId,
    ) -> Result<usize, IoError> {
        if self.ids.contains_key(&socket) {
            // API misuse: the id is taken.
            return Err(IoError::Other(None));
        }
        let idx = *self.ids.get(&listener).ok_or(IoError::UnknownSocket)?;
        let Some(Some(Entry {
            kind: Kind::TcpListener(l),
            ..
        })) = self.slots.get_mut(idx)
        else {
            // Not a listening socket.
            return Err(IoError::Other(None));
        };
        if l.waiting.contains(&socket) || l.waiting.len() >= MAX_PENDING_REPORTS {
            return Err(IoError::Other(None));
        }
        l.waiting.push_back(socket);
        Ok(idx)
    }
    /// Accepts connections on listener slot `idx` while the machine has ids waiting for them,
    /// registering each stream and reporting `Accepted` (or a failed accept) on its id.
    pub(super) fn accept_waiting(&mut self, idx: usize) {
        loop {
            let Some(Some(Entry {
                kind: Kind::TcpListener(l),
                ..
            })) = self.slots.get_mut(idx)
            else {
                return;
            };
            let Some(&socket) = l.waiting.front() else {
                return;
            };
            let (mut stream, remote) = match l.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    l.waiting.pop_front();
                    self.fail(socket, OpKind::Accept, map_io_error(&e));
                    continue;
                }
            };
            l.waiting.pop_front();
            if self.ids.contains_key(&socket) {
                // The machine bound this id meanwhile: misuse; the connection is dropped.
                self.fail(socket, OpKind::Accept, IoError::Other(None));
                continue;
            }
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    self.fail(socket, OpKind::Accept, map_io_error(&e));
                    continue;
                }
            };
            let new_idx = self.free.pop().unwrap_or(self.slots.len());
            let registered = self.poll.registry().register(
                &mut stream,
                Token(new_idx),
                Interest::READABLE | Interest::WRITABLE,
            );
            if let Err(e) = registered {
                if new_idx < self.slots.len() {
                    self.free.push(new_idx);
                }
                self.fail(socket, OpKind::Accept, map_io_error(&e));
                continue;
            }
            let serial = self.next_serial;
            self.next_serial = serial.wrapping_add(1);
            let entry = Entry {
                id: socket,
                serial,
                local,
                kind: Kind::TcpStream(Stream {
                    stream,
                    remote,
                    connected: true,
                    read_closed: false,
                    out: Vec::new(),
                    shutdown: Shutdown::No,
                    refused: false,
                }),
            };
            match self.slots.get_mut(new_idx) {
                Some(slot) => *slot = Some(entry),
                None => self.slots.push(Some(entry)),
            }
            self.ids.insert(socket, new_idx);
            self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
            self.report(socket, SocketOutcome::Accepted { local, remote });
            // Bytes may have arrived before registration: read them on the next turn.
            self.carry.push(new_idx);
        }
    }
    /// Queues a failed intent.
    pub(super) fn fail(&mut self, socket: SocketId, op: OpKind, error: IoError) {
        self.stats.op_failures = self.stats.op_failures.saturating_add(1);
        let outcome = SocketOutcome::Failed {
            op,
            destination: None,
            error,
        };
        self.report(socket, outcome);
    }
    /// Queues an outcome for the machine, within [`MAX_PENDING_REPORTS`].
    pub(super) fn report(&mut self, socket: SocketId, outcome: SocketOutcome) {
        match &outcome {
            SocketOutcome::Bound { local } => tracing::debug!(%socket, %local, "socket opened"),
            SocketOutcome::Connected { local, remote } => {
                tracing::debug!(%socket, %local, %remote, "connected");
            }
            SocketOutcome::Accepted { local, remote } => {
                tracing::debug!(%socket, %local, %remote, "accepted");
            }
            SocketOutcome::Failed {
                op,
                destination,
                error,
            } => tracing::debug!(%socket, %op, ?destination, %error, "socket intent failed"),
            _ => {}
        }
        if self.pending.len() >= MAX_PENDING_REPORTS {
            tracing::debug!(%socket, "outcome dropped: too many reports pending");
            self.stats.reports_dropped = self.stats.reports_dropped.saturating_add(1);
        } else {
            self.pending.push_back((socket, outcome));
        }
    }
    /// Creates, configures, binds and registers a socket for `id`; returns its real local address.
    pub(super) fn bind(
        &mut self,
        id: SocketId,
        transport: Transport,
        local: SocketAddr,
        options: BindOptions,
    ) -> Result<SocketAddr, IoError> {
        if self.ids.contains_key(&id) {
            // API misuse: the id is taken. The open socket is left alone.
            return Err(IoError::Other(None));
        }
        let (mut kind, local) = match transport {
            Transport::Udp => {
                let (sock, local) = open_udp(local, &options)?;
                (Kind::Udp(sock), local)
            }
            Transport::Tcp => {
                let (sock, local) = open_tcp(local, &options)?;
                (Kind::TcpBound(sock), local)
            }
        };
        let idx = self.free.pop().unwrap_or(self.slots.len());
        let registered = match &mut kind {
            Kind::Udp(sock) => self
                .poll
                .registry()
                .register(sock, Token(idx), Interest::READABLE),
            _ => Ok(()),
        };
        if let Err(e) = registered {
            if idx < self.slots.len() {
                self.free.push(idx);
            }
            return Err(map_io_error(&e));
        }
        let serial = self.next_serial;
        self.next_serial = serial.wrapping_add(1);
        let entry = Entry {
            id,
            serial,
            local,
            kind,
        };
        match self.slots.get_mut(idx) {
            Some(slot) => *slot = Some(entry),
            None => self.slots.push(Some(entry)),
        }
        self.ids.insert(id, idx);
        self.stats.sockets_opened = self.stats.sockets_opened.saturating_add(1);
        Ok(local)
    }
    /// Sets the TTL (IPv4) or unicast hop limit (IPv6) of socket `id`.
    pub(super) fn set_ttl(&mut self, id: SocketId, ttl: u8) -> Result<(), IoError> {
        let entry = self.entry(id).ok_or(IoError::UnknownSocket)?;
        let sock = match &entry.kind {
            Kind::Udp(sock) => SockRef::from(sock),
            Kind::TcpBound(sock) => SockRef::from(sock),
            Kind::TcpStream(st) | Kind::Lingering(st, _) => SockRef::from(&st.stream),
            Kind::TcpListener(l) => SockRef::from(&l.listener),
        };
        let result = if entry.local.is_ipv4() {
            sock.set_ttl_v4(u32::from(ttl))
        } else {
            sock.set_unicast_hops_v6(u32::from(ttl))
        };
        result.map_err(|e| map_io_error(&e))
    }
    /// Deregisters and drops socket `id`; unknown ids are ignored.
    pub(super) fn close(&mut self, id: SocketId) {
        let Some(idx) = self.ids.remove(&id) else {
            return;
        };
        if let Some(mut entry) = self.slots.get_mut(idx).and_then(Option::take) {
            self.stats.sockets_closed = self.stats.sockets_closed.saturating_add(1);
            if let Kind::TcpStream(st) = entry.kind {
                if st.shutdown == Shutdown::Pending && !st.out.is_empty() {
                    // Closed after a `Shutdown` with bytes still queued: they are delivered
                    // anyway (then the FIN), as a kernel does with a socket closed with unsent
                    // data; the machine's id is free at once.
                    let until = std::time::Instant::now()
                        .checked_add(LINGER)
                        .unwrap_or_else(std::time::Instant::now);
                    entry.kind = Kind::Lingering(st, until);
                    if let Some(slot) = self.slots.get_mut(idx) {
                        *slot = Some(entry);
                    }
                    self.lingering = self.lingering.saturating_add(1);
                    return;
                }
                entry.kind = Kind::TcpStream(st);
            }
            let registry = self.poll.registry();
            let _ = match &mut entry.kind {
                Kind::Udp(sock) => registry.deregister(sock),
                Kind::TcpStream(st) => registry.deregister(&mut st.stream),
                // Outstanding accepts end with the listener, without a report.
                Kind::TcpListener(l) => registry.deregister(&mut l.listener),
                Kind::TcpBound(_) | Kind::Lingering(..) => Ok(()),
            };
            tracing::debug!(socket = %id, local = %entry.local, "socket closed");
        }
        self.free.push(idx);
    }
    /// The table entry for `id`.
    pub(super) fn entry(&self, id: SocketId) -> Option<&Entry> {
        let idx = *self.ids.get(&id)?;
        self.slots.get(idx)?.as_ref()
    }
}
