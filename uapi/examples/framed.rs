//! Sends numbered framed messages over loopback TCP and checks them.
//!
//! A receiver thread plays the server: it reads frames (a 24-byte header
//! with the sequence number and payload length, then the payload) and
//! checks every byte. The client batches frames, payloads leased from
//! three registered buffers, keeps several requests in flight on the one
//! socket (they arrive in order), resumes any request cut short, and
//! prints which paths the kernel gave it.
//!
//!     cargo run -p sendzc-iov --example framed -- [FRAMES] [PER_BATCH]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use sendzc_iov::frame::{Batch, Event, FrameSender, Payload};

const HEADER: usize = 24;
const BUFFERS: u16 = 3;
const BUFFER_LEN: usize = 4 << 20;
/// Requests in flight at most; a new batch waits for room in the pool.
const IN_FLIGHT: usize = 8;

/// The payload of frame `seq`: its length (0 for every 10th: a header
/// alone) and bytes, derived from `seq`.
fn payload_len(seq: u64) -> usize {
    if seq % 10 == 9 {
        0
    } else {
        1 + (seq as usize * 7919) % 60_000
    }
}

fn payload_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_add((i % 251) as u8)
}

fn header(seq: u64, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8..16].copy_from_slice(&(len as u64).to_le_bytes());
    h[16..].copy_from_slice(b"FRAMEHDR");
    h
}

fn serve(mut conn: TcpStream, frames: u64) -> Result<(), String> {
    for seq in 0..frames {
        let mut h = [0u8; HEADER];
        conn.read_exact(&mut h)
            .map_err(|e| format!("frame {seq}: {e}"))?;
        let got_seq = u64::from_le_bytes(h[..8].try_into().unwrap());
        let len = u64::from_le_bytes(h[8..16].try_into().unwrap()) as usize;
        if got_seq != seq || &h[16..] != b"FRAMEHDR" || len != payload_len(seq) {
            return Err(format!("frame {seq}: bad header {h:?}"));
        }
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)
            .map_err(|e| format!("frame {seq}: {e}"))?;
        if let Some(i) = (0..len).find(|&i| payload[i] != payload_byte(seq, i)) {
            return Err(format!("frame {seq}: payload byte {i} differs"));
        }
    }
    Ok(())
}

/// The next batch: up to `per_batch` frames from `seq`, payloads written
/// into leases; None if the pool has no room now.
fn next_batch(sender: &FrameSender, seq: &mut u64, frames: u64, per_batch: usize) -> Option<Batch> {
    let mut batch = Batch::new();
    let start = *seq;
    while *seq < frames && batch.len() < per_batch {
        let len = payload_len(*seq);
        let payload = match len {
            0 => Payload::None,
            _ => {
                let Some(mut lease) = sender.lease(len) else {
                    *seq = start;
                    return None;
                };
                for (i, byte) in lease.iter_mut().enumerate() {
                    *byte = payload_byte(*seq, i);
                }
                Payload::Fixed(lease)
            }
        };
        batch.push(&header(*seq, len), payload).ok()?;
        *seq += 1;
    }
    Some(batch)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: framed [FRAMES (default 1000)] [PER_BATCH 1..=512 (default 16)]";
    let mut args = std::env::args().skip(1);
    let frames: u64 = args
        .next()
        .map_or(Ok(1000), |a| a.parse())
        .map_err(|_| usage)?;
    let per_batch: usize = args
        .next()
        .map_or(Ok(16), |a| a.parse())
        .map_err(|_| usage)?;
    if !(1..=512).contains(&per_batch) {
        return Err(usage.into());
    }

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (conn, _) = listener.accept()?;
    let server = std::thread::spawn(move || serve(conn, frames));

    let mut sender = FrameSender::new(64, BUFFERS, BUFFER_LEN)?;
    println!("policy: {:?}", sender.core().policy());

    let (mut requests, mut released) = (0usize, 0usize);
    let mut paths = BTreeMap::new();
    let mut seq = 0;
    while seq < frames || released < requests {
        // Keep up to IN_FLIGHT requests going; the core keeps their order.
        while seq < frames && requests - released < IN_FLIGHT {
            let Some(batch) = next_batch(&sender, &mut seq, frames, per_batch) else {
                break; // the pool is full until a release
            };
            sender.submit(client.as_fd(), batch)?;
            requests += 1;
        }
        for event in sender.poll(Duration::from_secs(10))? {
            match event {
                Event::Sent {
                    path, remainder, ..
                } => {
                    *paths.entry(format!("{path:?}")).or_insert(0) += 1;
                    if let Some(rest) = remainder {
                        sender.resume(rest)?;
                    }
                }
                Event::Failed { error, .. } => return Err(error.into()),
                Event::Released { .. } => released += 1,
            }
        }
    }
    server.join().expect("server thread")?;
    println!("{frames} frames in {requests} requests, all verified by the receiver");
    println!("results per path: {paths:?}");
    Ok(())
}
