//! An SNTP responder on loopback whose clock runs a known offset from the system clock (or that
//! answers with a kiss-o'-death), for the SNTP machine's real-socket tests and `p2pd ntp`'s.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2pd_punch::sntp::packet::{unix_nanos_to_ntp, KissCode, NtpPacket, PACKET_LEN};

/// The system clock in Unix nanoseconds.
pub fn unix_now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

/// How the responder answers.
#[derive(Copy, Clone)]
pub enum Behaviour {
    /// Its clock is the system clock plus this many nanoseconds.
    Offset(i128),
    /// A kiss-o'-death with this code.
    Kiss(KissCode),
}

/// A tiny SNTP responder on 127.0.0.1 in a thread, answering every request as its
/// [`Behaviour`] says; [`Responder::stop`] returns how many requests it answered.
pub struct Responder {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Responder {
    /// Binds 127.0.0.1:0 and starts answering.
    pub fn start(behaviour: Behaviour) -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answered = 0;
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let received = unix_now_ns();
                let Ok(request) = NtpPacket::decode(&buf[..n]) else {
                    continue;
                };
                let mut reply = NtpPacket {
                    leap: 0,
                    version: request.version,
                    mode: 4,
                    stratum: 1,
                    poll: request.poll,
                    precision: -20,
                    root_delay: 0,
                    root_dispersion: 0,
                    reference_id: *b"LOCL",
                    reference_ts: 0,
                    originate_ts: request.transmit_ts,
                    receive_ts: 0,
                    transmit_ts: 0,
                };
                match behaviour {
                    Behaviour::Offset(offset) => {
                        reply.reference_ts = unix_nanos_to_ntp(received + offset - 1_000_000_000);
                        reply.receive_ts = unix_nanos_to_ntp(received + offset);
                        reply.transmit_ts = unix_nanos_to_ntp(unix_now_ns() + offset);
                    }
                    Behaviour::Kiss(code) => {
                        reply.stratum = 0;
                        reply.reference_id = code.0;
                    }
                }
                let mut out = [0u8; PACKET_LEN];
                reply.encode(&mut out).unwrap();
                socket.send_to(&out, from).unwrap();
                answered += 1;
            }
            answered
        });
        Responder {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; the number of requests answered.
    pub fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}
