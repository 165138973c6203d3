//! A request's frames: headers (copied in when pushed) and payloads (moved
//! in), and what a sendmsg carries besides them.

use std::net::SocketAddr;
use std::ops::Range;

use super::pool::Lease;
use super::FrameError;

/// Most iovecs a request may have (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;
/// Most bytes one request may carry (the kernel's `MAX_RW_COUNT`).
pub const MAX_BYTES: usize = 0x7fff_f000;

/// Where a payload's bytes are. The request owns them until its
/// [`Event::Released`](super::Event::Released) hands them back.
#[derive(Debug)]
pub enum Payload {
    /// No payload: the frame is its header alone.
    None,
    /// A range of a registered [`TxPool`](super::TxPool) buffer.
    Fixed(Lease),
    /// Memory of the caller's, zero-copied from user pages.
    Owned(Vec<u8>),
}

impl Payload {
    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Payload::None => &[],
            Payload::Fixed(lease) => lease,
            Payload::Owned(data) => data,
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True if it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) struct Frame {
    pub(crate) header: Range<usize>,
    pub(crate) payload: Payload,
}

/// The frames of one request, and its sendmsg options.
#[derive(Default)]
pub struct Batch {
    pub(crate) headers: Vec<u8>,
    pub(crate) frames: Vec<Frame>,
    pub(crate) dest: Option<SocketAddr>,
    /// Control messages: (level, type, data), in order.
    pub(crate) control: Vec<(i32, i32, Vec<u8>)>,
    pub(crate) msg_flags: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends a frame: `header` (copied now), then `payload`. A frame may
    /// be a header alone ([`Payload::None`]); it may not be empty.
    pub fn push(&mut self, header: &[u8], payload: Payload) -> Result<&mut Batch, FrameError> {
        let frame = self.frames.len();
        if header.is_empty() && payload.is_empty() {
            return Err(FrameError::EmptyFrame { frame });
        }
        if self.iovecs() + 2 > MAX_IOVECS {
            return Err(FrameError::TooManyIovecs { max: MAX_IOVECS });
        }
        let bytes = self.bytes() + header.len() + payload.len();
        if bytes > MAX_BYTES {
            return Err(FrameError::TooLarge {
                bytes,
                max: MAX_BYTES,
            });
        }
        let start = self.headers.len();
        self.headers.extend_from_slice(header);
        self.frames.push(Frame {
            header: start..self.headers.len(),
            payload,
        });
        Ok(self)
    }

    /// Sends to `dest` (`msg_name`), for unconnected datagram sockets.
    pub fn to(&mut self, dest: SocketAddr) -> &mut Batch {
        self.dest = Some(dest);
        self
    }

    /// UDP_SEGMENT: the kernel cuts the request into datagrams of `size`
    /// bytes (GSO), so one request can carry a train of datagrams.
    pub fn segment_size(&mut self, size: u16) -> &mut Batch {
        self.control(libc::SOL_UDP, libc::UDP_SEGMENT, &size.to_ne_bytes())
    }

    /// Adds a control message (`cmsg_level`, `cmsg_type`, its data), e.g.
    /// `SOL_SOCKET`/`SCM_TXTIME` with a u64, or `SOL_IP`/`IP_TOS` with an int.
    pub fn control(&mut self, level: i32, ty: i32, data: &[u8]) -> &mut Batch {
        self.control.push((level, ty, data.to_vec()));
        self
    }

    /// More `MSG_*` flags for the sendmsg (MSG_WAITALL is always set).
    pub fn msg_flags(&mut self, flags: u32) -> &mut Batch {
        self.msg_flags = flags;
        self
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True if no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes the request puts on the wire.
    pub fn bytes(&self) -> usize {
        self.headers.len() + self.frames.iter().map(|f| f.payload.len()).sum::<usize>()
    }

    /// The iovecs the frames need (none for an empty part).
    pub fn iovecs(&self) -> usize {
        self.pieces().count()
    }

    /// The non-empty pieces in wire order: (bytes, the payload they are).
    pub(crate) fn pieces(&self) -> impl Iterator<Item = (&[u8], Option<&Payload>)> {
        self.frames
            .iter()
            .flat_map(move |f| {
                [
                    (&self.headers[f.header.clone()], None),
                    (f.payload.bytes(), Some(&f.payload)),
                ]
            })
            .filter(|(bytes, _)| !bytes.is_empty())
    }

    /// Where the first unsent byte is, after `sent` bytes went out.
    pub fn position(&self, sent: usize) -> Resume {
        let mut left = sent;
        for (frame, f) in self.frames.iter().enumerate() {
            let len = f.header.len() + f.payload.len();
            if left < len {
                return Resume {
                    frame,
                    offset: left,
                };
            }
            left -= len;
        }
        Resume {
            frame: self.frames.len(),
            offset: 0,
        }
    }

    /// The payloads, in frame order, for the release.
    pub(crate) fn into_payloads(self) -> Vec<Payload> {
        self.frames.into_iter().map(|f| f.payload).collect()
    }
}

/// A position in a batch: byte `offset` of frame `frame` (header first,
/// then payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The first frame not sent completely.
    pub frame: usize,
    /// Its bytes already sent (header first, then payload).
    pub offset: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_only_frames_and_empty_frames() {
        let mut batch = Batch::new();
        batch.push(b"hdr", Payload::None).unwrap();
        batch.push(b"", Payload::Owned(vec![1, 2])).unwrap();
        assert_eq!(batch.iovecs(), 2);
        assert_eq!(batch.bytes(), 5);
        assert_eq!(
            batch.push(b"", Payload::None).err(),
            Some(FrameError::EmptyFrame { frame: 2 })
        );
    }

    #[test]
    fn refuses_too_many_iovecs() {
        let mut batch = Batch::new();
        for _ in 0..MAX_IOVECS / 2 {
            batch.push(b"h", Payload::Owned(vec![0])).unwrap();
        }
        assert_eq!(
            batch.push(b"h", Payload::None).err(),
            Some(FrameError::TooManyIovecs { max: MAX_IOVECS })
        );
    }

    #[test]
    fn position_after_partial_send() {
        let mut batch = Batch::new();
        batch.push(&[0; 24], Payload::Owned(vec![1; 100])).unwrap();
        batch.push(&[0; 24], Payload::None).unwrap();
        let at = |sent| batch.position(sent);
        assert_eq!(
            at(0),
            Resume {
                frame: 0,
                offset: 0
            }
        );
        assert_eq!(
            at(123),
            Resume {
                frame: 0,
                offset: 123
            }
        );
        assert_eq!(
            at(124),
            Resume {
                frame: 1,
                offset: 0
            }
        );
        assert_eq!(
            at(130),
            Resume {
                frame: 1,
                offset: 6
            }
        );
        assert_eq!(
            at(148),
            Resume {
                frame: 2,
                offset: 0
            }
        );
    }
}
