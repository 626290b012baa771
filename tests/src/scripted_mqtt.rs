//! A scripted MQTT client machine built on the signaling crate's codec, for tests of the
//! simulated broker and of attacks on nodes: it dials, sends CONNECT once the stream is up, then
//! whatever it is told, and reports every packet it decodes.

use core::net::{Ipv4Addr, SocketAddr};
use std::collections::VecDeque;

use p2pd_proto::{
    BindOptions, Instant, IoError, Machine, OpKind, SocketId, SocketOp, SocketOutcome, Transmit,
    Transport, Verdict,
};
use p2pd_signaling::mqtt::codec::{
    encode, Decoded, Decoder, Packet, Protocol, QoS, SkippedPublish,
};

/// What the scripted client reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    TcpUp,
    Packet(Packet),
    /// A PUBLISH larger than the client's decoder takes.
    Skipped(SkippedPublish),
    PeerClosed,
    Failed(OpKind, IoError),
}

/// A scripted MQTT client: dials, sends CONNECT once the stream is up, then whatever it is told;
/// reports every packet it decodes. PUBLISH QoS 1 is acknowledged automatically when `auto_ack`.
pub struct Client {
    pub protocol: Protocol,
    pub client_id: String,
    pub keep_alive: u16,
    pub clean: bool,
    pub auto_ack: bool,
    pub auto_connect: bool,
    /// MQTT 5: the Maximum Packet Size its CONNECT states.
    pub max_packet_size: Option<u32>,
    /// The broker it dials.
    pub broker: SocketAddr,
    pub socket: SocketId,
    pub up: bool,
    pub decoder: Decoder,
    pub ops: VecDeque<SocketOp>,
    pub transmits: VecDeque<Vec<u8>>,
    pub events: VecDeque<Ev>,
}

impl Client {
    /// A client of the broker at 192.0.2.50:1883 (see [`Client::broker`]), not dialled yet.
    pub fn new(protocol: Protocol, client_id: &str) -> Self {
        Client {
            protocol,
            client_id: client_id.into(),
            keep_alive: 60,
            clean: true,
            auto_ack: true,
            auto_connect: true,
            max_packet_size: None,
            broker: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 50), 1883)),
            socket: SocketId(0),
            up: false,
            decoder: Decoder::new(protocol, 64 * 1024),
            ops: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Opens a new connection to the broker (CONNECT follows once it is up).
    pub fn dial(&mut self) {
        self.socket = SocketId(self.socket.0 + 1);
        self.decoder = Decoder::new(self.protocol, 64 * 1024);
        self.up = false;
        self.ops.push_back(SocketOp::Bind {
            socket: self.socket,
            transport: Transport::Tcp,
            local: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            options: BindOptions::default(),
        });
        self.ops.push_back(SocketOp::Connect {
            socket: self.socket,
            remote: self.broker,
        });
    }

    /// Sends `packet` on the current connection.
    pub fn send(&mut self, packet: &Packet) {
        let mut wire = Vec::new();
        encode(packet, self.protocol, &mut wire).expect("encodable");
        self.transmits.push_back(wire);
    }

    /// Sends raw bytes on the current connection.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.transmits.push_back(bytes.to_vec());
    }

    /// Closes the current connection.
    pub fn hang_up(&mut self) {
        // Nothing more goes out on the closed socket.
        self.up = false;
        self.transmits.clear();
        self.ops.push_back(SocketOp::Close {
            socket: self.socket,
        });
    }
}

impl Machine for Client {
    type Event = Ev;

    fn handle_stream(&mut self, _: Instant, socket: SocketId, data: &[u8]) -> Verdict {
        if socket != self.socket {
            return Verdict::NotMine;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.decoder.push(rest).expect("decoder alive");
            rest = &rest[n..];
            while let Some(p) = self.decoder.next() {
                let p = match p.expect("broker sends valid packets") {
                    Decoded::Packet(p) => p,
                    Decoded::Skipped(s) => {
                        self.events.push_back(Ev::Skipped(s));
                        continue;
                    }
                };
                if let Packet::Publish {
                    qos: QoS::AtLeastOnce,
                    pkid,
                    ..
                } = p
                {
                    if self.auto_ack {
                        self.send(&Packet::PubAck { pkid });
                    }
                }
                self.events.push_back(Ev::Packet(p));
            }
        }
        Verdict::Consumed
    }

    fn handle_socket_result(&mut self, _: Instant, socket: SocketId, outcome: SocketOutcome) {
        if socket != self.socket {
            return;
        }
        match outcome {
            SocketOutcome::Connected { .. } => {
                self.up = true;
                self.events.push_back(Ev::TcpUp);
                if !self.auto_connect {
                    return;
                }
                let connect = Packet::Connect {
                    client_id: self.client_id.clone(),
                    keep_alive: self.keep_alive,
                    clean_session: self.clean,
                    protocol: self.protocol,
                    max_packet_size: self.max_packet_size,
                };
                self.send(&connect);
            }
            SocketOutcome::PeerClosed => {
                self.events.push_back(Ev::PeerClosed);
                self.hang_up();
            }
            SocketOutcome::Failed { op, error, .. } => {
                self.events.push_back(Ev::Failed(op, error));
                if op != OpKind::Send {
                    self.hang_up();
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, _: Instant) {}

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        if !self.up {
            return None;
        }
        let len = crate::pop_chunk(&mut self.transmits, buf)?;
        Some(Transmit {
            socket: self.socket,
            destination: self.broker,
            len,
        })
    }

    fn poll_socket_op(&mut self) -> Option<SocketOp> {
        self.ops.pop_front()
    }

    fn poll_event(&mut self) -> Option<Ev> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}
