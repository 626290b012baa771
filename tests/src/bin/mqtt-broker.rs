//! `mqtt-broker`: the simulator's minimal MQTT 3.1.1 + 5 broker machine
//! ([`p2pd_sim::MqttBroker`]) on real sockets (the mio runtime), for demos and tests on machines
//! without mosquitto. It is a test broker: no authentication, no persistence, bounded everything.
//!
//! ```text
//! mqtt-broker [--listen ADDR]      # default 127.0.0.1:1883; prints "listening ADDR", runs until killed
//! ```

use std::net::SocketAddr;
use std::ops::ControlFlow;

use p2pd_mio::Runtime;
use p2pd_sim::{BrokerConfig, BrokerEvent, MqttBroker};

fn main() {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1883));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => match v.parse() {
                Ok(addr) => listen = addr,
                Err(e) => {
                    eprintln!("mqtt-broker: --listen {v}: {e}");
                    std::process::exit(2);
                }
            },
            _ => {
                eprintln!("usage: mqtt-broker [--listen ADDR]");
                std::process::exit(2);
            }
        }
    }
    let mut rt = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt-broker: runtime: {e}");
            std::process::exit(1);
        }
    };
    let mut broker = MqttBroker::new(BrokerConfig {
        listen,
        ..BrokerConfig::default()
    });
    let mut failed = false;
    let result = rt.run(&mut broker, None, |_, _, ev| {
        match ev {
            BrokerEvent::Listening { local } => println!("listening {local}"),
            BrokerEvent::ListenFailed { error } => {
                eprintln!("mqtt-broker: cannot listen on {listen}: {error:?}");
                failed = true;
                return ControlFlow::Break(());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    if let Err(e) = result {
        eprintln!("mqtt-broker: event loop: {e}");
        std::process::exit(1);
    }
    if failed {
        std::process::exit(1);
    }
}
