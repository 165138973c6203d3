//! The header+payload API against the running kernel, over loopback TCP.
//!
//! On a kernel without the series (the host) this exercises the fallbacks
//! for real; in the VM on the patched kernel, the per-iovec path as well.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use rstest::rstest;
use sendzc_iov::frame::{
    detect_path, Batch, BufferPool, Event, FrameError, FrameSender, Path, Payload, RequestPath,
};

const SIZES: [usize; 3] = [64 * 1024, 32 * 1024, 16 * 1024];

fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (rx, _) = listener.accept().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (tx, rx)
}

fn sender(path: Path) -> FrameSender {
    let ring = io_uring::IoUring::new(32).unwrap();
    let mut sender = FrameSender::with_path(ring, BufferPool::new(&SIZES).unwrap(), path).unwrap();
    for buf in 0..SIZES.len() as u16 {
        for (i, byte) in sender
            .pool_mut()
            .buffer_mut(buf)
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            *byte = (i as u8).wrapping_mul(7).wrapping_add(buf as u8 * 50);
        }
    }
    sender
}

/// A header that names its frame: sequence number and payload length.
fn header(seq: u32, len: usize) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[..4].copy_from_slice(&seq.to_le_bytes());
    h[4..12].copy_from_slice(&(len as u64).to_le_bytes());
    h
}

/// The paths this kernel can take, best first.
fn available_paths() -> Vec<Path> {
    let best = detect_path().unwrap();
    [Path::PerIovec, Path::FixedBuf, Path::Copy]
        .into_iter()
        .skip_while(|p| *p != best)
        .collect()
}

/// Sends `batch` and returns (bytes received, events).
fn send_and_receive(sender: &mut FrameSender, batch: Batch) -> (Vec<u8>, Vec<Event>) {
    let (tx, mut rx) = connected();
    let total = batch.bytes();
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    let events = sender.wait_for(id).unwrap();
    let mut got = vec![0; total];
    rx.read_exact(&mut got).unwrap();
    (got, events)
}

fn expected_bytes(sender: &FrameSender, frames: &[([u8; 24], Payload)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (h, p) in frames {
        bytes.extend_from_slice(h);
        match p {
            Payload::Fixed { buf, range } => {
                bytes.extend_from_slice(&sender.pool().buffer(*buf).unwrap()[range.clone()])
            }
            Payload::Owned(data) => bytes.extend_from_slice(data),
        }
    }
    bytes
}

fn frames(spread_over_buffers: bool) -> Vec<([u8; 24], Payload)> {
    (0..12u32)
        .map(|seq| {
            let buf = if spread_over_buffers {
                (seq % 3) as u16
            } else {
                1
            };
            let start = 100 * seq as usize + 3;
            let payload = if spread_over_buffers && seq % 4 == 3 {
                Payload::Owned(vec![seq as u8; 1000 + seq as usize])
            } else {
                Payload::Fixed {
                    buf,
                    range: start..start + 4000,
                }
            };
            (header(seq, payload_len(&payload)), payload)
        })
        .collect()
}

fn payload_len(p: &Payload) -> usize {
    match p {
        Payload::Fixed { range, .. } => range.len(),
        Payload::Owned(d) => d.len(),
    }
}

#[rstest]
fn frames_arrive_in_order_on_every_path(#[values(false, true)] spread: bool) {
    for path in available_paths() {
        let mut sender = sender(path);
        let frames = frames(spread);
        let expected = expected_bytes(&sender, &frames);
        let mut batch = Batch::new();
        for (h, p) in &frames {
            batch.push(h, p.clone()).unwrap();
        }
        let (got, events) = send_and_receive(&mut sender, batch);
        assert_eq!(got, expected, "{path:?}");

        let [Event::Sent {
            path: used,
            sent,
            total,
            resume: None,
            ..
        }, Event::Released { payloads, .. }] = &events[..]
        else {
            panic!("{path:?}: unexpected events {events:?}");
        };
        assert_eq!((*sent, *total), (expected.len(), expected.len()));
        let want = match (path, spread) {
            (Path::PerIovec, _) => RequestPath::PerIovec,
            (Path::FixedBuf, false) => RequestPath::FixedBuf { buf: 1 },
            _ => RequestPath::Copy,
        };
        assert_eq!(*used, want, "{path:?}");
        let owned: Vec<&Vec<u8>> = frames
            .iter()
            .filter_map(|(_, p)| match p {
                Payload::Owned(d) => Some(d),
                _ => None,
            })
            .collect();
        assert_eq!(payloads.iter().collect::<Vec<_>>(), owned, "{path:?}");
        assert_eq!(sender.in_flight(), 0);
    }
}

#[test]
fn best_path_matches_the_kernel() {
    let path = FrameSender::new(
        io_uring::IoUring::new(4).unwrap(),
        BufferPool::new(&[]).unwrap(),
    )
    .unwrap()
    .path();
    match std::env::var("SENDZC_EXPECT_FEATURE").as_deref() {
        Ok("1") => assert_eq!(path, Path::PerIovec),
        _ => assert_ne!(path, Path::PerIovec, "the host kernel has no series"),
    }
}

#[test]
fn a_buffer_in_flight_cannot_be_written() {
    let mut sender = sender(detect_path().unwrap());
    let (tx, mut rx) = connected();
    // Fill the socket so that the request stays in flight.
    tx.set_nonblocking(true).unwrap();
    let filler = vec![0u8; 1 << 16];
    let mut queued = 0;
    while let Ok(n) = (&tx).write_nonblocking(&filler) {
        queued += n;
    }
    tx.set_nonblocking(false).unwrap();
    let mut batch = Batch::new();
    batch
        .push(
            &header(0, 4000),
            Payload::Fixed {
                buf: 2,
                range: 0..4000,
            },
        )
        .unwrap();
    let total = batch.bytes();
    let id = sender.submit(tx.as_fd(), batch).unwrap();
    assert_eq!(
        sender.pool_mut().buffer_mut(2).err(),
        Some(FrameError::Busy { buf: 2 })
    );
    assert!(sender.pool().is_busy(2));
    assert!(
        sender.pool_mut().buffer_mut(0).is_ok(),
        "other buffers stay writable"
    );

    let reader = std::thread::spawn(move || {
        let mut all = vec![0; queued + total];
        rx.read_exact(&mut all).map(|()| all)
    });
    let events = sender.wait_for(id).unwrap();
    assert!(
        matches!(events.last(), Some(Event::Released { .. })),
        "{events:?}"
    );
    assert!(sender.pool_mut().buffer_mut(2).is_ok());
    reader.join().unwrap().unwrap();
}

trait WriteNonblocking {
    fn write_nonblocking(self, data: &[u8]) -> std::io::Result<usize>;
}

impl WriteNonblocking for &TcpStream {
    fn write_nonblocking(mut self, data: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut self, data)
    }
}

#[test]
fn bad_batches_are_refused_before_submission() {
    let mut sender = sender(detect_path().unwrap());
    let (tx, _rx) = connected();
    let cases: Vec<(Batch, FrameError)> = vec![
        (Batch::new(), FrameError::Empty),
        (
            {
                let mut b = Batch::new();
                b.push(
                    b"h",
                    Payload::Fixed {
                        buf: 7,
                        range: 0..1,
                    },
                )
                .unwrap();
                b
            },
            FrameError::UnknownBuffer { frame: 0, buf: 7 },
        ),
        (
            {
                let mut b = Batch::new();
                b.push(b"h", Payload::Owned(vec![1])).unwrap();
                b.push(
                    b"h",
                    Payload::Fixed {
                        buf: 2,
                        range: 16000..16385,
                    },
                )
                .unwrap();
                b
            },
            FrameError::OutOfRange {
                frame: 1,
                buf: 2,
                range: 16000..16385,
                len: 16 * 1024,
            },
        ),
    ];
    for (batch, want) in cases {
        assert_eq!(sender.submit(tx.as_fd(), batch).err(), Some(want));
        assert_eq!(sender.in_flight(), 0);
    }
}

#[test]
fn a_closed_socket_fails_the_request_and_still_releases_it() {
    let mut sender = sender(detect_path().unwrap());
    let (tx, rx) = connected();
    drop(rx);
    std::thread::sleep(Duration::from_millis(50));
    let mut failed = false;
    // The first send may still succeed (the peer's RST arrives with it).
    for _ in 0..4 {
        let mut batch = Batch::new();
        batch
            .push(
                &header(0, 100),
                Payload::Fixed {
                    buf: 0,
                    range: 0..100,
                },
            )
            .unwrap();
        let id = sender.submit(tx.as_fd(), batch).unwrap();
        let events = sender.wait_for(id).unwrap();
        assert!(
            matches!(events.last(), Some(Event::Released { .. })),
            "{events:?}"
        );
        if let Some(Event::Failed { error, .. }) = events.first() {
            assert_eq!(error.raw_os_error(), Some(libc::EPIPE), "{error}");
            failed = true;
            break;
        }
    }
    assert!(failed, "sends to a closed peer never failed");
    assert!(!sender.pool().is_busy(0));
}
