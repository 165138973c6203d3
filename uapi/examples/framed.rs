//! Sends numbered framed messages over loopback TCP and checks them.
//!
//! A receiver thread plays the server: it reads frames (a 24-byte header
//! with the sequence number and payload length, then the payload) and
//! checks every byte. The client batches frames, payloads spread over
//! three registered buffers, and prints which path the kernel gave it.
//!
//!     cargo run -p sendzc-iov --example framed -- [FRAMES] [PER_BATCH]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

use sendzc_iov::frame::{Batch, BufferPool, Event, FrameSender, Payload};

const HEADER: usize = 24;
const BUFFERS: usize = 3;
/// Room for one payload in a buffer (payloads are below 60 000 bytes).
const SLOT: usize = 64 * 1024;

/// The payload of frame `seq`: its length and bytes, derived from `seq`.
fn payload_len(seq: u64) -> usize {
    1 + (seq as usize * 7919) % 60_000
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

    let ring = io_uring::IoUring::new(64)?;
    let slots_per_buffer = per_batch.div_ceil(BUFFERS);
    let pool = BufferPool::new(&[slots_per_buffer * SLOT; BUFFERS])?;
    let mut sender = FrameSender::new(ring, pool)?;
    println!("path: {:?}", sender.path());

    let (mut sent, mut requests) = (0usize, 0usize);
    let mut paths = std::collections::BTreeMap::new();
    let mut seq = 0;
    while seq < frames {
        // Write this batch's payloads into the buffers, one frame per slot.
        let mut batch = Batch::new();
        for slot in 0..per_batch.min((frames - seq) as usize) {
            let len = payload_len(seq);
            let buf = (slot % BUFFERS) as u16;
            let start = (slot / BUFFERS) * SLOT;
            let memory = sender.pool_mut().buffer_mut(buf)?;
            for (i, byte) in memory[start..start + len].iter_mut().enumerate() {
                *byte = payload_byte(seq, i);
            }
            let payload = Payload::Fixed {
                buf,
                range: start..start + len,
            };
            batch.push(&header(seq, len), payload)?;
            seq += 1;
        }
        let id = sender.submit(client.as_fd(), batch)?;
        requests += 1;
        // Wait for the release: the next batch rewrites the same buffers.
        for event in sender.wait_for(id)? {
            match event {
                Event::Sent {
                    sent: n,
                    total,
                    path,
                    ..
                } if n == total => {
                    sent += n;
                    *paths.entry(format!("{path:?}")).or_insert(0) += 1;
                }
                Event::Sent { sent: n, total, .. } => {
                    return Err(format!("short send {n}/{total}").into())
                }
                Event::Failed { error, .. } => return Err(error.into()),
                Event::Released { .. } => {}
            }
        }
    }
    server.join().expect("server thread")?;
    println!("{frames} frames in {requests} requests, {sent} bytes, all verified");
    println!("requests per path: {paths:?}");
    Ok(())
}
