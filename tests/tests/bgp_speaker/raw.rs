//! A raw-TCP BGP peer: what the daemons never send (malformed UPDATEs, collisions) and what
//! they hide (the exact messages the speaker sends), read and written message by message.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use testkit::process::wait_for;
use vipwire::bgp::wire::{self, Capabilities, Family, HEADER_LEN, Message, Open};

pub fn accept(listener: &TcpListener, within: Duration) -> TcpStream {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let stream = wait_for("the speaker to connect", within, || {
        listener.accept().ok().map(|(s, _)| s)
    });
    stream.set_nonblocking(false).expect("blocking stream");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("read timeout");
    stream
}

pub fn read(stream: &mut TcpStream) -> Message {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).expect("a message header");
    let len = wire::message_len(&header).expect("a valid header");
    let mut buf = header.to_vec();
    buf.resize(len, 0);
    stream
        .read_exact(&mut buf[HEADER_LEN..])
        .expect("a message body");
    wire::decode(&buf).expect("a message we can decode")
}

pub fn send(stream: &mut TcpStream, msg: &Message) {
    stream
        .write_all(&wire::encode(msg).expect("encodable"))
        .expect("write");
}

/// OPEN/KEEPALIVE exchange as AS `asn`; returns the speaker's OPEN.
/// The next message that is not a KEEPALIVE.
pub fn read_skipping_keepalives(stream: &mut TcpStream) -> Message {
    loop {
        match read(stream) {
            Message::Keepalive => continue,
            other => return other,
        }
    }
}

pub fn handshake(stream: &mut TcpStream, asn: u32, router_id: Ipv4Addr) -> Open {
    let Message::Open(theirs) = read(stream) else {
        panic!("the speaker did not start with OPEN")
    };
    send(
        stream,
        &Message::Open(Open {
            version: 4,
            asn,
            hold_time: 9,
            router_id,
            capabilities: Capabilities {
                four_octet_as: Some(asn),
                families: vec![Family::Ipv4],
                route_refresh: true,
                graceful_restart: None,
            },
        }),
    );
    send(stream, &Message::Keepalive);
    assert_eq!(read(stream), Message::Keepalive);
    theirs
}
