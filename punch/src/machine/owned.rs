//! [`Owned`]: a puncher with its winner kept (see its docs).

use core::net::SocketAddr;

use p2pd_channel::Channel;
use p2pd_proto::{Instant, Machine, SocketId, SocketOp, SocketOutcome, Transmit, Verdict};

use super::{PunchEvent, Puncher};

/// A [`Puncher`] and the simplest caller it can have: at [`PunchEvent::Connected`] it takes the
/// winner's channel ([`Puncher::take_channel`]) and writes what the channel holds (the leader's
/// last handshake message, then whatever the caller sends through the channel in [`Owned::won`]) on the
/// winner, as a node does; it closes the winner on [`Owned::close`]. Everything else is the
/// puncher's (it derefs to it). For tests and harnesses that drive a bare puncher on a network
/// (the simulator, in-memory pairs); a real caller is [`crate::node::PunchNode`].
pub struct Owned {
    puncher: Puncher,
    /// The winner: its socket, the peer's end, its channel.
    pub won: Option<(SocketId, SocketAddr, Channel)>,
    /// The winner's `Close`, once closing.
    close: Option<SocketOp>,
}

impl Owned {
    /// `puncher`, nothing won yet.
    pub fn new(puncher: Puncher) -> Owned {
        Owned {
            puncher,
            won: None,
            close: None,
        }
    }

    /// Closes the puncher and the winner (its channel, then its socket once).
    pub fn close(&mut self, now: Instant) {
        self.puncher.close(now);
        if let Some((socket, _, channel)) = &mut self.won {
            if self.close.is_none() {
                channel.close(now);
                self.close = Some(SocketOp::Close { socket: *socket });
            }
        }
    }
}

impl core::ops::Deref for Owned {
    type Target = Puncher;
    fn deref(&self) -> &Puncher {
        &self.puncher
    }
}

impl core::ops::DerefMut for Owned {
    fn deref_mut(&mut self) -> &mut Puncher {
        &mut self.puncher
    }
}

impl Machine for Owned {
    type Event = PunchEvent;

    fn handle_stream(&mut self, now: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        match &mut self.won {
            Some((won, _, channel)) if *won == socket => {
                channel.handle_input(now, data);
                Verdict::Consumed
            }
            _ => self.puncher.handle_stream(now, socket, data),
        }
    }

    fn handle_socket_result(&mut self, now: Instant, socket: SocketId, outcome: SocketOutcome) {
        if self.won.as_ref().is_none_or(|(won, _, _)| *won != socket) {
            self.puncher.handle_socket_result(now, socket, outcome);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.puncher.handle_timeout(now);
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.puncher.poll_transmit(buf) {
            return Some(t);
        }
        let (socket, destination, channel) = self.won.as_mut()?;
        let len = channel.poll_transmit(buf)?;
        Some(Transmit {
            socket: *socket,
            destination: *destination,
            len,
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.puncher.poll_socket_op().or_else(|| self.close.take())
    }

    fn poll_event(&mut self) -> Option<PunchEvent> {
        let ev = self.puncher.poll_event()?;
        if let PunchEvent::Connected { socket, remote, .. } = &ev {
            if let Some(channel) = self.puncher.take_channel(*socket) {
                self.won = Some((*socket, *remote, channel));
            }
        }
        Some(ev)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.puncher.poll_timeout()
    }
}
