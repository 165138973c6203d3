//! [`SendCore`]: batches into SQEs on the caller's ring, CQEs into events.
//!
//! The core owns no ring. [`SendCore::submit`] pushes into the caller's
//! `IoUring` (the caller then calls `ring.submit()`), the caller hands every
//! CQE whose user_data carries the core's tag to [`SendCore::complete`],
//! and calls [`SendCore::flush`] after completions to push the requests
//! that may go now (see "Order" in the module documentation).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{cqueue, IoUring};

use super::attempt::{Attempt, Socket};
use super::batch::{Batch, Payload};
use super::path::{Offers, Path, Policy, RequestPath};
use super::pool::Lease;
use super::target::{SocketKind, Target};
use super::token::Tokens;
use super::{Event, FrameError, Remainder, RequestId};
use crate::sys;

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting behind an earlier request on its stream.
    Queued,
    /// To be pushed by the next flush.
    Ready,
    /// Pushed; its result has not come yet.
    InKernel,
    /// Cut short; its [`Remainder`] is with the caller.
    Paused,
    /// Result known; waiting only for notifications.
    Done,
}

struct Request {
    target: Target,
    batch: Batch,
    path: RequestPath,
    /// The headers, staged in the payloads' buffer for FixedBuf.
    staged: Option<Lease>,
    /// Bytes of the batch on the wire so far.
    sent: usize,
    attempts: Vec<Attempt>,
    state: State,
    /// Already fell back to copy once.
    retried: bool,
}

/// Requests on one stream socket: the one that may be in the kernel, then
/// the ones waiting.
#[derive(Default)]
struct Stream {
    active: Option<u64>,
    waiting: VecDeque<u64>,
}

/// Turns batches into SQEs on the caller's ring and CQEs into [`Event`]s.
pub struct SendCore {
    ring_fd: RawFd,
    policy: Policy,
    tokens: Tokens,
    requests: HashMap<u64, Request>,
    /// Token to request; a token may stand for both CQEs of an attempt
    /// (see `secret_notif`).
    by_token: HashMap<u64, u64>,
    /// Notifications get a token of their own (`sqe->addr3`). Without, the
    /// result's token is reused, which is sound only where nobody but the
    /// core sees the CQEs (FrameSender).
    secret_notif: bool,
    streams: HashMap<Socket, Stream>,
    ready: VecDeque<u64>,
    next_id: u64,
}

impl SendCore {
    /// A core for `ring`, whose CQEs it will recognise by `tag` (the top
    /// byte of their user_data: route those to [`SendCore::complete`]).
    /// Zero-copy needs notifications with a user_data of their own
    /// ([`Offers::notif_user_data`]); where the kernel has none, a policy
    /// other than [`Path::Copy`] is refused with `Unsupported`.
    pub fn new(ring: &IoUring, policy: Policy, tag: u8) -> io::Result<SendCore> {
        let offers = Offers::probe()?;
        if policy.path != Path::Copy && !offers.notif_user_data {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "zero-copy on the caller's ring needs notifications with a user_data of \
                 their own (sqe->addr3), which this kernel lacks: use Path::Copy, or \
                 FrameSender, whose CQEs nobody else sees",
            ));
        }
        SendCore::build(ring, policy, tag, offers.notif_user_data)
    }

    /// A core whose CQEs only its owner sees (FrameSender), which may share
    /// the result's token with the notification.
    pub(crate) fn with_private_cqes(
        ring: &IoUring,
        policy: Policy,
        tag: u8,
        offers: Offers,
    ) -> io::Result<SendCore> {
        SendCore::build(ring, policy, tag, offers.notif_user_data)
    }

    fn build(ring: &IoUring, policy: Policy, tag: u8, secret_notif: bool) -> io::Result<SendCore> {
        Ok(SendCore {
            ring_fd: ring.as_raw_fd(),
            policy,
            tokens: Tokens::new(tag)?,
            requests: HashMap::new(),
            by_token: HashMap::new(),
            secret_notif,
            streams: HashMap::new(),
            ready: VecDeque::new(),
            next_id: 1,
        })
    }

    /// The policy requests are sent by.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// True if `user_data` carries this core's tag.
    pub fn is_mine(&self, user_data: u64) -> bool {
        self.tokens.tagged(user_data)
    }

    /// Requests not yet released.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The path [`SendCore::submit`] would give `batch` to `target`.
    pub fn path_for(&self, target: Target, batch: &Batch) -> RequestPath {
        self.policy.choose(target.kind, batch).0
    }

    /// Checks `batch` against this core's ring.
    fn validate(&self, batch: &Batch) -> Result<(), FrameError> {
        if batch.is_empty() {
            return Err(FrameError::Empty);
        }
        for (frame, f) in batch.frames.iter().enumerate() {
            if let Payload::Fixed(lease) = &f.payload {
                match lease.registration() {
                    Some((fd, _)) if fd == self.ring_fd => {}
                    _ => return Err(FrameError::NotRegistered { frame }),
                }
            }
        }
        Ok(())
    }

    fn check_ring(&self, ring: &IoUring) -> Result<(), FrameError> {
        if ring.as_raw_fd() == self.ring_fd {
            Ok(())
        } else {
            Err(FrameError::WrongRing)
        }
    }

    /// Takes `batch` as one request to `target`, and pushes it into `ring`
    /// unless it waits behind an earlier request on the same stream (then
    /// a later [`SendCore::flush`] pushes it). Nothing is taken if the
    /// batch is refused. The caller submits the ring.
    pub fn submit(
        &mut self,
        ring: &mut IoUring,
        target: impl Into<Target>,
        batch: Batch,
    ) -> Result<RequestId, FrameError> {
        self.check_ring(ring)?;
        self.validate(&batch)?;
        let target = target.into();
        let (path, staged) = self.policy.choose(target.kind, &batch);
        let id = self.next_id;
        self.next_id += 1;
        let mut state = State::Ready;
        if target.kind == SocketKind::Stream {
            let stream = self.streams.entry(target.socket).or_default();
            if stream.active.is_some() {
                stream.waiting.push_back(id);
                state = State::Queued;
            } else {
                stream.active = Some(id);
            }
        }
        self.requests.insert(
            id,
            Request {
                target,
                batch,
                path,
                staged,
                sent: 0,
                attempts: Vec::new(),
                state,
                retried: false,
            },
        );
        if state == State::Ready {
            self.ready.push_back(id);
        }
        self.flush(ring)?;
        Ok(RequestId(id))
    }

    /// Pushes the requests that may go now; returns how many. Stops, keeping
    /// the rest for the next call, when the submission queue is full.
    pub fn flush(&mut self, ring: &mut IoUring) -> Result<usize, FrameError> {
        self.check_ring(ring)?;
        let mut pushed = 0;
        while let Some(&id) = self.ready.front() {
            let result = self.fresh_token();
            let notif = match self.secret_notif {
                true => self.fresh_token(),
                false => result,
            };
            let req = self.requests.get_mut(&id).expect("ready requests exist");
            let mut attempt = Attempt::build(&req.batch, req.sent, req.path, req.staged.as_ref());
            let buf_index = match req.path {
                RequestPath::FixedBuf { .. } => req.staged_index(),
                _ => 0,
            };
            let flags = libc::MSG_WAITALL as u32 | req.batch.msg_flags;
            let notif_data = if self.secret_notif { notif } else { 0 };
            let entry = attempt.sqe(
                req.target.socket,
                req.path,
                buf_index,
                flags,
                result,
                notif_data,
            );
            if attempt.notif.is_some() {
                attempt.notif = Some(notif);
            }
            // SAFETY: everything the entry points to (the attempt's iovecs,
            // attributes and msghdr; the batch's headers and payloads; the
            // staged headers) is owned by the request, which stays in
            // `self.requests` until its last CQE has been seen, and is leaked
            // rather than freed if the core is dropped before that.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                break;
            }
            self.ready.pop_front();
            self.by_token.insert(result, id);
            if attempt.notif.is_some() {
                // A copy posts no notification: its token is never used.
                self.by_token.insert(notif, id);
            }
            req.attempts.push(attempt);
            req.state = State::InKernel;
            pushed += 1;
        }
        Ok(pushed)
    }

    fn fresh_token(&mut self) -> u64 {
        loop {
            let t = self.tokens.next();
            if !self.by_token.contains_key(&t) {
                return t;
            }
        }
    }

    /// The events of one CQE: none unless it is one this core is waiting
    /// for (forged, duplicate and foreign CQEs change nothing).
    pub fn complete(&mut self, cqe: &cqueue::Entry) -> Vec<Event> {
        let token = cqe.user_data();
        let Some(&id) = self.by_token.get(&token) else {
            return Vec::new();
        };
        let is_notif = cqe.flags() & sys::IORING_CQE_F_NOTIF != 0;
        let req = self
            .requests
            .get_mut(&id)
            .expect("tokens name live requests");
        let Some(attempt) = req.attempts.iter_mut().find(|a| match is_notif {
            true => a.notif == Some(token),
            false => a.result == Some(token),
        }) else {
            // The token's other CQE, which this one does not look like.
            return Vec::new();
        };
        let before = [attempt.result, attempt.notif];
        if is_notif {
            attempt.notif = None;
        } else {
            attempt.result = None;
            if cqe.flags() & sys::IORING_CQE_F_MORE == 0 {
                // No notification will come.
                attempt.notif = None;
            }
        }
        let after = [attempt.result, attempt.notif];
        for t in before.into_iter().flatten() {
            if !after.contains(&Some(t)) {
                self.by_token.remove(&t);
            }
        }
        let mut events = Vec::new();
        if !is_notif {
            events.extend(self.result(id, cqe.result()));
        }
        events.extend(self.release_if_done(id));
        events
    }

    /// A result CQE of request `id`.
    fn result(&mut self, id: u64, res: i32) -> Option<Event> {
        let req = self.requests.get_mut(&id).expect("live");
        let copy_would_do = matches!(-res, libc::EMSGSIZE | libc::EINVAL | libc::EOPNOTSUPP);
        if res < 0 && copy_would_do && req.path.zero_copy() && !req.retried {
            // Nothing of this attempt was sent: copying it keeps the stream
            // whole, and still gets the bytes out.
            req.retried = true;
            req.path = RequestPath::Copy;
            req.state = State::Ready;
            self.ready.push_front(id);
            return None;
        }
        let total = req.batch.bytes();
        if res >= 0 {
            req.sent += res as usize;
        }
        let stream = req.target.kind == SocketKind::Stream;
        let short = req.sent < total;
        let remainder = (stream && short).then(|| Remainder {
            id: RequestId(id),
            resume: req.batch.position(req.sent),
            left: total - req.sent,
        });
        req.state = if remainder.is_some() {
            State::Paused
        } else {
            State::Done
        };
        let (path, sent) = (req.path, req.sent);
        let socket = req.target.socket;
        if req.state == State::Done {
            self.next_on(socket, id);
        }
        Some(if res < 0 {
            Event::Failed {
                id: RequestId(id),
                path,
                sent,
                error: io::Error::from_raw_os_error(-res),
                remainder,
            }
        } else {
            Event::Sent {
                id: RequestId(id),
                path,
                sent,
                total,
                remainder,
            }
        })
    }

    /// Request `id` no longer holds stream `socket`: the next one may go.
    fn next_on(&mut self, socket: Socket, id: u64) {
        let Some(stream) = self.streams.get_mut(&socket) else {
            return;
        };
        if stream.active != Some(id) {
            return;
        }
        stream.active = stream.waiting.pop_front();
        match stream.active {
            Some(next) => {
                self.requests.get_mut(&next).expect("live").state = State::Ready;
                self.ready.push_back(next);
            }
            None => {
                self.streams.remove(&socket);
            }
        }
    }

    /// Tokens waiting for a CQE (for the tests: none once all is released).
    #[cfg(test)]
    fn live_tokens(&self) -> usize {
        self.by_token.len()
    }

    fn release_if_done(&mut self, id: u64) -> Option<Event> {
        let req = self.requests.get_mut(&id)?;
        req.attempts.retain(|a| !a.done());
        if req.state != State::Done || !req.attempts.is_empty() {
            return None;
        }
        let req = self.requests.remove(&id).expect("live");
        Some(Event::Released {
            id: RequestId(id),
            payloads: req.batch.into_payloads(),
        })
    }

    /// Sends the rest of a request that was cut short, before anything
    /// else on its stream; [`SendCore::flush`] pushes it.
    pub fn resume(&mut self, remainder: Remainder) {
        let id = remainder.id.0;
        if let Some(req) = self.requests.get_mut(&id) {
            req.state = State::Ready;
            self.ready.push_front(id);
        }
    }

    /// Gives up the rest of a request that was cut short: its stream moves
    /// on to the next request; its release follows its notifications.
    pub fn abandon(&mut self, remainder: Remainder) -> Vec<Event> {
        let id = remainder.id.0;
        let Some(req) = self.requests.get_mut(&id) else {
            return Vec::new();
        };
        req.state = State::Done;
        let socket = req.target.socket;
        self.next_on(socket, id);
        self.release_if_done(id).into_iter().collect()
    }
}

impl Request {
    /// The ring index of the buffer a FixedBuf request sends from.
    fn staged_index(&self) -> u16 {
        self.batch
            .frames
            .iter()
            .find_map(|f| match &f.payload {
                Payload::Fixed(lease) => lease.registration().map(|(_, i)| i),
                _ => None,
            })
            .unwrap_or(0)
    }
}

impl Drop for SendCore {
    fn drop(&mut self) {
        for (_, req) in self.requests.drain() {
            if !req.attempts.is_empty() {
                // The kernel may still read this memory: never free it.
                std::mem::forget(req);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn no_token_outlives_its_request() {
        let mut ring = IoUring::new(8).unwrap();
        // Secret notification tokens, as on kernels that have them.
        let mut core = SendCore::build(&ring, Policy::always(Path::Copy), 3, true).unwrap();
        let (tx, rx) = UnixStream::pair().unwrap();
        for _ in 0..3 {
            let mut batch = Batch::new();
            batch.push(b"header", Payload::Owned(vec![7; 100])).unwrap();
            core.submit(&mut ring, Target::fd(tx.as_raw_fd()), batch)
                .unwrap();
        }
        let mut released = 0;
        while released < 3 {
            ring.submit_and_wait(1).unwrap();
            let cqes: Vec<_> = ring.completion().collect();
            for cqe in &cqes {
                for event in core.complete(cqe) {
                    released += usize::from(matches!(event, Event::Released { .. }));
                }
            }
            core.flush(&mut ring).unwrap();
        }
        assert_eq!(core.in_flight(), 0);
        assert_eq!(core.live_tokens(), 0, "tokens left behind");
        drop(rx);
    }
}
