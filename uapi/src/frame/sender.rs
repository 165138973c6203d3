//! [`FrameSender`]: a ring, a pool and a core in one, for programs that do
//! not have a ring of their own.

use std::io;
use std::time::{Duration, Instant};

use io_uring::{types, IoUring};

use super::core::SendCore;
use super::path::{Offers, Policy};
use super::pool::{Lease, TxPool};
use super::target::Target;
use super::{Batch, Event, FrameError, Remainder, RequestId};

/// The tag of the sender's CQEs (it has the ring to itself).
const TAG: u8 = 0x5a;

/// A ring of its own, a [`TxPool`] registered in it from index 0, and a
/// [`SendCore`].
pub struct FrameSender {
    // Drop order: the core first (it leaks what the kernel may still
    // read), then the pool, then the ring.
    core: SendCore,
    pool: TxPool,
    ring: IoUring,
}

impl FrameSender {
    /// A ring of `entries`, `buffers` registered buffers of `buffer_len`
    /// bytes, and the best path of the running kernel. Its CQEs are seen by
    /// nobody else, so it can zero-copy where a [`SendCore`] on the
    /// caller's ring cannot (kernels whose notifications share the
    /// result's user_data).
    pub fn new(entries: u32, buffers: u16, buffer_len: usize) -> io::Result<FrameSender> {
        let policy = Policy::with_threshold(Offers::probe()?.best_with(true));
        FrameSender::with_policy(entries, buffers, buffer_len, policy)
    }

    /// As [`FrameSender::new`], with the caller's policy (to test a
    /// fallback on a kernel that has better).
    pub fn with_policy(
        entries: u32,
        buffers: u16,
        buffer_len: usize,
        policy: Policy,
    ) -> io::Result<FrameSender> {
        FrameSender::with_ring(IoUring::new(entries)?, buffers, buffer_len, policy)
    }

    /// As [`FrameSender::with_policy`], on a ring the caller built (with
    /// the builder's options) and hands over.
    pub fn with_ring(
        ring: IoUring,
        buffers: u16,
        buffer_len: usize,
        policy: Policy,
    ) -> io::Result<FrameSender> {
        ring.submitter()
            .register_buffers_sparse(u32::from(buffers))?;
        let pool = TxPool::new(buffers, buffer_len)?;
        pool.register(&ring, 0)?;
        let core = SendCore::with_private_cqes(&ring, policy, TAG, Offers::probe()?)?;
        Ok(FrameSender { core, pool, ring })
    }

    /// The core: policy, path per request, requests in flight.
    pub fn core(&self) -> &SendCore {
        &self.core
    }

    /// The registered buffers.
    pub fn pool(&self) -> &TxPool {
        &self.pool
    }

    /// Leases `len` bytes of the pool, to write a payload into.
    pub fn lease(&self, len: usize) -> Option<Lease> {
        self.pool.lease(len)
    }

    /// Sends `batch` to `target` as one request and submits the ring. If
    /// the ring refuses the submission the error says so; the request is
    /// queued in the ring all the same, under the id the error carries.
    pub fn submit(
        &mut self,
        target: impl Into<Target>,
        batch: Batch,
    ) -> Result<RequestId, FrameError> {
        let id = self.core.submit(&mut self.ring, target, batch)?;
        self.ring.submit().map_err(|e| FrameError::Ring {
            id: Some(id),
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        Ok(id)
    }

    /// Sends the rest of a request that was cut short.
    pub fn resume(&mut self, remainder: Remainder) -> Result<(), FrameError> {
        self.core.resume(remainder);
        self.push_and_submit()
    }

    /// Gives up the rest of a request that was cut short.
    pub fn abandon(&mut self, remainder: Remainder) -> Result<Vec<Event>, FrameError> {
        let events = self.core.abandon(remainder);
        self.push_and_submit()?;
        Ok(events)
    }

    fn push_and_submit(&mut self) -> Result<(), FrameError> {
        self.core.flush(&mut self.ring)?;
        self.ring.submit().map_err(|e| FrameError::Ring {
            id: None,
            errno: e.raw_os_error().unwrap_or(0),
        })?;
        Ok(())
    }

    /// Waits up to `timeout` for at least one CQE and returns the events of
    /// every CQE that arrived; pushes what may go next.
    pub fn poll(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        let cqes: Vec<_> = self.ring.completion().collect();
        let events = cqes
            .iter()
            .flat_map(|cqe| self.core.complete(cqe))
            .collect();
        self.push_and_submit().map_err(io::Error::from)?;
        Ok(events)
    }

    /// Waits until request `id` is released or cut short (its event then
    /// carries a [`Remainder`] to resume or abandon), at most `timeout`, and
    /// returns every event that arrived meanwhile, `id`'s among them.
    pub fn wait_for(&mut self, id: RequestId, timeout: Duration) -> io::Result<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let settled = events.iter().any(|e| match e {
                Event::Released { id: r, .. } => *r == id,
                Event::Sent {
                    id: r, remainder, ..
                }
                | Event::Failed {
                    id: r, remainder, ..
                } => *r == id && remainder.is_some(),
            });
            if settled {
                return Ok(events);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request {} not released within {timeout:?}", id.0),
                ));
            }
            events.extend(self.poll(left)?);
        }
    }
}
