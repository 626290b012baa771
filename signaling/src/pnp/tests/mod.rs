//! In-crate tests of the PNP registry: codec, rules and both machines driven against each other
//! over an in-memory network (UDP and TCP).

mod codec;
mod expiry;
mod flood;
mod harness;
mod machines;
mod rules;
mod tcp_fairness;
mod transport;
