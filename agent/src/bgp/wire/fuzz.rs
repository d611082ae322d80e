//! A seeded mutation fuzz loop over every decode path the session calls ([`message_len`] then
//! [`decode`]): valid messages of every kind we send and receive, mutated, with the header
//! length usually fixed up so the parser gets past framing. No panic allowed.

use super::*;
use crate::test_rng::Rng;

fn seeds() -> Vec<Vec<u8>> {
    let attrs = Attributes {
        as_path: vec![65100, 4_200_000_000],
        next_hop: Some("10.0.0.2".parse().unwrap()),
        med: Some(5),
        local_pref: Some(100),
        communities: vec![(65000, 1), (65100, 2)],
        large_communities: vec![(65100, 1, 1)],
    };
    let v6 = Attributes {
        next_hop: Some("fd00::2".parse().unwrap()),
        ..attrs.clone()
    };
    let open = Open {
        version: 4,
        asn: 4_200_000_000,
        hold_time: 90,
        router_id: Ipv4Addr::new(1, 2, 3, 4),
        capabilities: Capabilities {
            four_octet_as: Some(4_200_000_000),
            families: vec![Family::Ipv4, Family::Ipv6],
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![Family::Ipv4, Family::Ipv6],
                forwarding: false,
            }),
        },
    };
    let messages = [
        Message::Open(open),
        Message::Keepalive,
        Message::Notification(Notification::new(6, 2, [1, 2, 3])),
        Message::RouteRefresh(Family::Ipv6),
        Message::EndOfRib(Family::Ipv4),
        Message::EndOfRib(Family::Ipv6),
        Message::Update(Update {
            announce: vec![
                "203.0.113.0/24".parse().unwrap(),
                "10.1.2.3/32".parse().unwrap(),
            ],
            withdraw: vec!["198.51.100.7/32".parse().unwrap()],
            attributes: attrs,
        }),
        Message::Update(Update {
            announce: vec!["2001:db8::/64".parse().unwrap()],
            withdraw: vec!["2001:db8::1/128".parse().unwrap()],
            attributes: v6,
        }),
    ];
    messages.iter().map(|m| encode(m).unwrap()).collect()
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut buf = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 | 1 if buf.len() > HEADER_LEN => {
                let i = HEADER_LEN + rng.below(buf.len() - HEADER_LEN);
                buf[i] = rng.next() as u8;
            }
            2 if buf.len() > HEADER_LEN => {
                let i = HEADER_LEN + rng.below(buf.len() - HEADER_LEN);
                buf[i] ^= 1 << rng.below(8);
            }
            3 => {
                let i = rng.below(buf.len() + 1);
                buf.insert(i, rng.next() as u8);
            }
            4 if !buf.is_empty() => {
                let len = rng.below(buf.len());
                buf.truncate(len);
            }
            _ => {
                let i = rng.below(buf.len().max(1));
                if i < buf.len() {
                    buf[i] = rng.next() as u8;
                }
            }
        }
    }
    // Mostly keep the header length honest so the body parsers run.
    if buf.len() >= HEADER_LEN && rng.below(8) != 0 {
        let len = u16::try_from(buf.len()).unwrap_or(u16::MAX);
        buf[16..18].copy_from_slice(&len.to_be_bytes());
        buf[..16].fill(0xff);
    }
    buf
}

/// What the session does with bytes off the wire; whether the whole buffer decoded.
fn exercise(buf: &[u8]) -> bool {
    if buf.len() >= HEADER_LEN {
        let header: [u8; HEADER_LEN] = buf[..HEADER_LEN].try_into().unwrap();
        if let Ok(len) = message_len(&header)
            && len <= buf.len()
            && let Err(e) = decode(&buf[..len])
        {
            let _ = e.notification();
        }
    }
    match decode(buf) {
        Ok(msg) => {
            // Status and logs format what arrived.
            let _ = format!("{msg:?}");
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

#[test]
fn decoders_survive_a_million_mutated_messages() {
    let seeds = seeds();
    let mut rng = Rng(0x0005_eed0_fb6b_u64);
    let started = std::time::Instant::now();
    let mut decoded = 0u32;
    let iterations = 1_000_000;
    for _ in 0..iterations {
        let buf = if rng.below(16) == 0 {
            let len = rng.below(64);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed)
        };
        if exercise(&buf) {
            decoded += 1;
        }
    }
    eprintln!(
        "{iterations} inputs in {:?}, {decoded} decoded",
        started.elapsed()
    );
    assert!(
        decoded > 1000,
        "mutations too destructive: {decoded} decoded"
    );
}
