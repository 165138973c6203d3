//! Sends numbered framed messages over loopback TCP and checks them.
//!
//! A receiver thread plays the server: it reads frames (a 24-byte header
//! with the sequence number and payload length, then the payload) and
//! checks every byte. The client batches frames, payloads leased from
//! three registered buffers, keeps several requests in flight on the one
//! socket (they arrive in order), resumes any request cut short, and
//! prints which paths the kernel gave it. Last it sends the same frames
//! with a plain writev(2) loop and prints the CPU time per byte of both
//! (the sending thread's, from getrusage: noisy, and under QEMU TCG the
//! guest's emulated time).
//!
//!     cargo run -p sendzc-iov --example framed -- [FRAMES] [PER_BATCH]

use std::collections::BTreeMap;
use std::io::{Read, Write};
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
    let cpu_start = thread_cpu();

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
    let cpu_frame = thread_cpu() - cpu_start;
    server.join().expect("server thread")?;
    println!("{frames} frames in {requests} requests, all verified by the receiver");
    println!("results per path: {paths:?}");
    let bytes: usize = (0..frames).map(|s| HEADER + payload_len(s)).sum();
    let cpu_writev = writev_loop(frames, per_batch)?;
    for (name, cpu) in [("frame API", cpu_frame), ("writev loop", cpu_writev)] {
        println!(
            "{name:>11}: {:.2} ns CPU per byte (sending thread, getrusage; emulated under TCG)",
            cpu.as_nanos() as f64 / bytes as f64
        );
    }
    Ok(())
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain data, and getrusage writes only into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The same frames, `per_batch` to a writev(2), to a receiver that reads
/// and discards them; returns the sending thread's CPU time.
fn writev_loop(frames: u64, per_batch: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (mut conn, _) = listener.accept()?;
    let drain = std::thread::spawn(move || std::io::copy(&mut conn, &mut std::io::sink()));
    let start = thread_cpu();
    let mut seq = 0;
    while seq < frames {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        while seq < frames && parts.len() < 2 * per_batch {
            let len = payload_len(seq);
            parts.push(header(seq, len).to_vec());
            parts.push((0..len).map(|i| payload_byte(seq, i)).collect());
            seq += 1;
        }
        // writev until every part is written, resuming mid-part.
        let (mut part, mut offset) = (0, 0);
        while part < parts.len() {
            let slices: Vec<std::io::IoSlice> = parts[part..]
                .iter()
                .enumerate()
                .map(|(k, p)| std::io::IoSlice::new(if k == 0 { &p[offset..] } else { p }))
                .collect();
            let mut n = (&client).write_vectored(&slices)?;
            while n > 0 {
                let rest = parts[part].len() - offset;
                if n >= rest {
                    (part, offset, n) = (part + 1, 0, n - rest);
                } else {
                    (offset, n) = (offset + n, 0);
                }
            }
            while part < parts.len() && parts[part].len() == offset {
                (part, offset) = (part + 1, 0);
            }
        }
    }
    let cpu = thread_cpu() - start;
    drop(client);
    drain.join().expect("drain thread")?;
    Ok(cpu)
}
