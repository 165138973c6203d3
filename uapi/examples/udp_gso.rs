//! Sends trains of UDP datagrams (UDP_SEGMENT, one request per train) to
//! several destinations from one unconnected socket, payloads leased from
//! a registered TX pool, and checks every datagram at the receivers.
//!
//! Each datagram is a 24-byte header (destination, train, segment) and a
//! payload; a train of SEGMENTS datagrams is one request of SEGMENTS
//! (header, payload) pairs that the kernel cuts into datagrams.
//!
//!     cargo run -p sendzc-iov --example udp_gso -- [TRAINS] [SEGMENTS]

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::time::Duration;

use sendzc_iov::frame::{Batch, Event, FrameSender, Payload};

const DESTINATIONS: usize = 3;
const HEADER: usize = 24;
const PAYLOAD: usize = 1176;

fn header(dest: usize, train: u32, segment: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&(dest as u64).to_le_bytes());
    h[8..12].copy_from_slice(&train.to_le_bytes());
    h[12..16].copy_from_slice(&segment.to_le_bytes());
    h[16..].copy_from_slice(b"GSOTRAIN");
    h
}

fn payload_byte(train: u32, segment: u32, i: usize) -> u8 {
    (train as u8) ^ (segment as u8).wrapping_mul(3) ^ (i % 253) as u8
}

/// Receives `expected` datagrams on `rx` and checks each one.
fn receive(rx: &UdpSocket, dest: usize, expected: u32) -> Result<(), String> {
    let mut seen = BTreeMap::new();
    let mut buf = [0u8; 2048];
    for _ in 0..expected {
        let n = rx
            .recv(&mut buf)
            .map_err(|e| format!("destination {dest}: {e}"))?;
        if n != HEADER + PAYLOAD || &buf[16..HEADER] != b"GSOTRAIN" {
            return Err(format!("destination {dest}: bad datagram of {n} bytes"));
        }
        let got_dest = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
        let train = u32::from_le_bytes(buf[8..12].try_into().unwrap());
        let segment = u32::from_le_bytes(buf[12..16].try_into().unwrap());
        let payload = &buf[HEADER..n];
        if got_dest != dest || (0..PAYLOAD).any(|i| payload[i] != payload_byte(train, segment, i)) {
            return Err(format!(
                "destination {dest}: train {train} segment {segment} differs"
            ));
        }
        if seen.insert((train, segment), ()).is_some() {
            return Err(format!(
                "destination {dest}: train {train} segment {segment} twice"
            ));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage =
        "usage: udp_gso [TRAINS per destination (default 20)] [SEGMENTS 1..=40 (default 16)]";
    let mut args = std::env::args().skip(1);
    let trains: u32 = args
        .next()
        .map_or(Ok(20), |a| a.parse())
        .map_err(|_| usage)?;
    let segments: u32 = args
        .next()
        .map_or(Ok(16), |a| a.parse())
        .map_err(|_| usage)?;
    if !(1..=40).contains(&segments) {
        return Err(usage.into());
    }
    let receivers: Vec<UdpSocket> = (0..DESTINATIONS)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let addrs = receivers
        .iter()
        .map(|rx| rx.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    // Receivers read while the trains go out, so that none overflows.
    let threads: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(dest, rx)| {
            std::thread::spawn(move || {
                rx.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
                receive(&rx, dest, trains * segments)
            })
        })
        .collect();
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let mut sender = FrameSender::new(64, 2, 1 << 20)?;
    println!("policy: {:?}", sender.core().policy());

    let mut paths = BTreeMap::new();
    let mut in_flight = 0;
    for train in 0..trains {
        for (dest, addr) in addrs.iter().enumerate() {
            let mut batch = Batch::new();
            for segment in 0..segments {
                let mut lease = loop {
                    match sender.lease(PAYLOAD) {
                        Some(lease) => break lease,
                        // The pool is full: wait for a release.
                        None => {
                            in_flight -=
                                released(sender.poll(Duration::from_secs(10))?, &mut paths)?
                        }
                    }
                };
                for (i, byte) in lease.iter_mut().enumerate() {
                    *byte = payload_byte(train, segment, i);
                }
                batch.push(&header(dest, train, segment), Payload::Fixed(lease))?;
            }
            batch.to(*addr).segment_size((HEADER + PAYLOAD) as u16);
            sender.submit(tx.as_fd(), batch)?;
            in_flight += 1;
        }
    }
    while in_flight > 0 {
        in_flight -= released(sender.poll(Duration::from_secs(10))?, &mut paths)?;
    }
    for thread in threads {
        thread.join().expect("receiver thread")?;
    }
    println!(
        "{} trains of {segments} datagrams to {DESTINATIONS} destinations, all verified",
        trains as usize * DESTINATIONS
    );
    println!("results per path: {paths:?}");
    Ok(())
}

/// Counts the releases among `events`; fails on a failed request.
fn released(
    events: Vec<Event>,
    paths: &mut BTreeMap<String, usize>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let mut n = 0;
    for event in events {
        match event {
            Event::Sent { path, .. } => *paths.entry(format!("{path:?}")).or_insert(0) += 1,
            Event::Failed { error, .. } => return Err(error.into()),
            Event::Released { .. } => n += 1,
        }
    }
    Ok(n)
}
