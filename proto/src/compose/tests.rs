//! Every intent variant is translated both ways, ids never collide, closes release.

use super::SocketMap;
use crate::{SocketId, SocketOp, Transmit, Transport};

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Child {
    A,
    B,
    Parent,
}

fn bind(id: u32) -> SocketOp {
    SocketOp::Bind {
        socket: SocketId(id),
        transport: Transport::Tcp,
        local: "0.0.0.0:0".parse().unwrap(),
        options: Default::default(),
    }
}

#[test]
fn same_child_ids_get_distinct_outer_ids_and_route_back() {
    let mut m = SocketMap::new();
    let a = m.outbound(Child::A, bind(0)).unwrap().socket();
    let b = m.outbound(Child::B, bind(0)).unwrap().socket();
    assert_ne!(a, b);
    assert_eq!(m.route(a), Some((Child::A, SocketId(0))));
    assert_eq!(m.route(b), Some((Child::B, SocketId(0))));
    assert_eq!(m.outer(Child::B, SocketId(0)), Some(b));
    assert_eq!(m.len(), 2);
}

#[test]
fn every_variant_is_translated_including_accept_and_shutdown() {
    let mut m = SocketMap::new();
    // Occupy outer ids so that child ids and outer ids differ.
    for i in 0..5 {
        m.outbound(Child::B, bind(100 + i)).unwrap();
    }
    let listener = m.outbound(Child::A, bind(1)).unwrap().socket();
    let remote = "192.0.2.1:80".parse().unwrap();
    assert_eq!(
        m.outbound(
            Child::A,
            SocketOp::Listen {
                socket: SocketId(1),
                backlog: 4
            }
        ),
        Some(SocketOp::Listen {
            socket: listener,
            backlog: 4
        })
    );
    let accept = m
        .outbound(
            Child::A,
            SocketOp::Accept {
                listener: SocketId(1),
                socket: SocketId(2),
            },
        )
        .unwrap();
    let SocketOp::Accept {
        listener: l,
        socket: accepted,
    } = accept
    else {
        panic!("{accept:?}")
    };
    assert_eq!(l, listener, "the listener is translated");
    assert_ne!(accepted, SocketId(2), "the new socket gets an outer id");
    assert_eq!(m.route(accepted), Some((Child::A, SocketId(2))));
    assert_eq!(
        m.outbound(
            Child::A,
            SocketOp::Shutdown {
                socket: SocketId(2)
            }
        ),
        Some(SocketOp::Shutdown { socket: accepted })
    );
    assert_eq!(
        m.outbound(
            Child::A,
            SocketOp::SetTtl {
                socket: SocketId(1),
                ttl: 3
            }
        ),
        Some(SocketOp::SetTtl {
            socket: listener,
            ttl: 3
        })
    );
    let c = m.outbound(Child::A, bind(3)).unwrap().socket();
    assert_eq!(
        m.outbound(
            Child::A,
            SocketOp::Connect {
                socket: SocketId(3),
                remote
            }
        ),
        Some(SocketOp::Connect { socket: c, remote })
    );
    let t = Transmit {
        socket: SocketId(3),
        destination: remote,
        len: 10,
    };
    assert_eq!(m.transmit(Child::A, t).unwrap().socket, c);
}

#[test]
fn close_releases_and_later_inputs_find_nothing() {
    let mut m = SocketMap::new();
    let a = m.outbound(Child::A, bind(0)).unwrap().socket();
    assert_eq!(
        m.outbound(
            Child::A,
            SocketOp::Close {
                socket: SocketId(0)
            }
        ),
        Some(SocketOp::Close { socket: a })
    );
    assert_eq!(m.route(a), None);
    assert!(m.is_empty());
    // The same child id opened again gets a new outer id, not the one just released.
    let again = m.outbound(Child::A, bind(0)).unwrap().socket();
    assert_ne!(again, a);
    assert!(!m.holds_any(Child::B));
    assert!(m.holds_any(Child::A));
}

#[test]
fn intents_for_sockets_a_child_does_not_hold_are_dropped_and_counted() {
    let mut m = SocketMap::new();
    m.outbound(Child::A, bind(0)).unwrap();
    assert_eq!(
        m.outbound(
            Child::B,
            SocketOp::Close {
                socket: SocketId(0)
            }
        ),
        None
    );
    let t = Transmit {
        socket: SocketId(9),
        destination: "192.0.2.1:80".parse().unwrap(),
        len: 1,
    };
    assert_eq!(m.transmit(Child::A, t), None);
    assert_eq!(m.unknown(), 2);
}

#[test]
fn adopt_moves_a_socket_to_its_new_owner() {
    let mut m = SocketMap::new();
    let outer = m.outbound(Child::A, bind(7)).unwrap().socket();
    assert_eq!(
        m.adopt(Child::A, SocketId(7), Child::Parent, SocketId(0)),
        Some(outer)
    );
    assert_eq!(m.route(outer), Some((Child::Parent, SocketId(0))));
    // What the old owner queued before the hand-over still goes out on the socket.
    let t = Transmit {
        socket: SocketId(7),
        destination: "192.0.2.1:80".parse().unwrap(),
        len: 1,
    };
    assert_eq!(m.transmit(Child::A, t).unwrap().socket, outer);
    assert_eq!(
        m.outbound(
            Child::Parent,
            SocketOp::Close {
                socket: SocketId(0)
            }
        ),
        Some(SocketOp::Close { socket: outer })
    );
    // Closed: neither name finds it any more.
    assert_eq!(m.transmit(Child::A, t), None);
    assert!(m.is_empty());
}

#[test]
fn outer_ids_skip_those_in_use_when_they_wrap() {
    let mut m = SocketMap::new();
    let first = m.outbound(Child::A, bind(0)).unwrap().socket();
    m.next = u32::MAX;
    let last = m.outbound(Child::A, bind(1)).unwrap().socket();
    assert_eq!(last, SocketId(u32::MAX));
    let wrapped = m.outbound(Child::A, bind(2)).unwrap().socket();
    assert_ne!(wrapped, first, "id 0 is in use");
    assert_eq!(wrapped, SocketId(1));
}

#[test]
fn forget_drops_a_retired_childs_outstanding_accept_and_aliases_only() {
    let mut m = SocketMap::new();
    let listener = m.outbound(Child::A, bind(0)).unwrap().socket();
    let accept = m
        .outbound(
            Child::A,
            SocketOp::Accept {
                listener: SocketId(0),
                socket: SocketId(1),
            },
        )
        .unwrap()
        .socket();
    let stream = m.outbound(Child::A, bind(2)).unwrap().socket();
    let other = m.outbound(Child::B, bind(0)).unwrap().socket();
    // A hands its stream over, then closes its listener (which ends the outstanding accept
    // without a Close of its own).
    assert_eq!(
        m.adopt(Child::A, SocketId(2), Child::Parent, SocketId(7)),
        Some(stream)
    );
    m.outbound(
        Child::A,
        SocketOp::Close {
            socket: SocketId(0),
        },
    )
    .unwrap();
    assert_eq!(m.route(listener), None);
    assert_eq!(m.len(), 3, "the accept's id is still held");
    assert_eq!(m.forget(Child::A), 1);
    assert_eq!(m.route(accept), None);
    assert_eq!(m.outer(Child::A, SocketId(2)), None, "alias gone");
    assert_eq!(m.route(stream), Some((Child::Parent, SocketId(7))));
    assert_eq!(m.route(other), Some((Child::B, SocketId(0))));
    assert_eq!(m.len(), 2);
    assert!(!m.holds_any(Child::A));
}
