//! Multi-broker rendezvous over MQTT. (Being written; see the issue tracker.)
