//! A ring whose waits are bounded, and the CQE protocol of zero-copy sends.

use std::io;
use std::time::{Duration, Instant};

use io_uring::{cqueue, squeue, types, IoUring};
use sendzc_iov::sys;

use crate::CQE_TIMEOUT;

/// One completion, copied out of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

impl Cqe {
    pub fn is_notif(&self) -> bool {
        self.flags & sys::IORING_CQE_F_NOTIF != 0
    }

    pub fn has_more(&self) -> bool {
        self.flags & sys::IORING_CQE_F_MORE != 0
    }
}

impl From<&cqueue::Entry> for Cqe {
    fn from(e: &cqueue::Entry) -> Cqe {
        Cqe {
            user_data: e.user_data(),
            res: e.result(),
            flags: e.flags(),
        }
    }
}

/// A ring plus bounded submission and reaping.
pub struct Ring {
    pub ring: IoUring,
}

/// How a ring is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Default,
    /// IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER: completions
    /// run only when this thread waits for them.
    DeferTaskrun,
    /// IORING_SETUP_SQPOLL: a kernel thread submits.
    SqPoll,
}

impl Ring {
    pub fn new(entries: u32) -> io::Result<Ring> {
        Ring::with_setup(entries, Setup::Default)
    }

    pub fn with_setup(entries: u32, setup: Setup) -> io::Result<Ring> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(entries * 4);
        match setup {
            Setup::Default => {}
            Setup::DeferTaskrun => {
                builder.setup_defer_taskrun().setup_single_issuer();
            }
            Setup::SqPoll => {
                builder.setup_sqpoll(1000);
            }
        }
        Ok(Ring {
            ring: builder.build(entries)?,
        })
    }

    /// Queues `entry`.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid until its CQEs
    /// (for zero-copy sends: its notification) have been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: the caller keeps the entry's buffers alive (see above).
        unsafe { self.ring.submission().push(entry) }
            .map_err(|_| io::Error::other("submission queue full"))
    }

    /// Submits what is queued and collects CQEs until `done` says the
    /// collection is complete; fails if that takes longer than [`CQE_TIMEOUT`].
    pub fn reap_until(&mut self, mut done: impl FnMut(&[Cqe]) -> bool) -> io::Result<Vec<Cqe>> {
        let deadline = Instant::now() + CQE_TIMEOUT;
        let mut got = Vec::new();
        loop {
            got.extend(self.ring.completion().map(|e| Cqe::from(&e)));
            if done(&got) {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("CQEs still missing after {CQE_TIMEOUT:?}; got {got:?}"),
                ));
            }
            let ts = types::Timespec::from(left.min(Duration::from_millis(500)));
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Exactly `n` CQEs.
    pub fn reap(&mut self, n: usize) -> io::Result<Vec<Cqe>> {
        let got = self.reap_until(|c| c.len() >= n)?;
        if got.len() > n {
            return Err(io::Error::other(format!(
                "expected {n} CQEs, got more: {got:?}"
            )));
        }
        Ok(got)
    }

    /// The CQEs of the zero-copy send `user_data`: its result and, if that
    /// has `F_MORE`, its notification; then checks that nothing else comes.
    pub fn reap_zc(&mut self, user_data: u64) -> io::Result<Vec<Cqe>> {
        let got = self.reap_until(|cqes| {
            let mine = || cqes.iter().filter(|c| c.user_data == user_data);
            match mine().find(|c| !c.is_notif()) {
                Some(result) => !result.has_more() || mine().any(Cqe::is_notif),
                None => false,
            }
        })?;
        self.expect_no_more_cqes()?;
        Ok(got)
    }

    /// Fails if any CQE is pending after a short grace period: zero-copy
    /// requests must not post anything beyond their result and notification.
    pub fn expect_no_more_cqes(&mut self) -> io::Result<()> {
        std::thread::sleep(Duration::from_millis(50));
        self.ring.submit()?;
        let extra: Vec<Cqe> = self.ring.completion().map(|e| Cqe::from(&e)).collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "unexpected extra CQEs: {extra:?}"
            )))
        }
    }
}

/// The CQEs of one zero-copy send: its result and its notification.
#[derive(Debug)]
pub struct ZcCompletion {
    pub result: Cqe,
    pub notif: Option<Cqe>,
}

/// Checks the documented protocol of a zero-copy send's CQEs, in ring order:
/// first the result; if it has `F_MORE`, exactly one `F_NOTIF` CQE with the
/// same user_data and without `F_MORE` follows, and nothing else.
pub fn zc_completion(cqes: &[Cqe], user_data: u64) -> Result<ZcCompletion, String> {
    let mine: Vec<&Cqe> = cqes.iter().filter(|c| c.user_data == user_data).collect();
    let Some((result, rest)) = mine.split_first() else {
        return Err(format!("no CQE for user_data {user_data}: {cqes:?}"));
    };
    if result.is_notif() {
        return Err(format!("notification before the result: {mine:?}"));
    }
    match (result.has_more(), rest) {
        (false, []) => Ok(ZcCompletion {
            result: **result,
            notif: None,
        }),
        (true, [notif]) if notif.is_notif() && !notif.has_more() => Ok(ZcCompletion {
            result: **result,
            notif: Some(**notif),
        }),
        _ => Err(format!(
            "bad CQE sequence for user_data {user_data}: {mine:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cqe(user_data: u64, res: i32, flags: u32) -> Cqe {
        Cqe {
            user_data,
            res,
            flags,
        }
    }

    const MORE: u32 = sys::IORING_CQE_F_MORE;
    const NOTIF: u32 = sys::IORING_CQE_F_NOTIF;

    #[test]
    fn accepts_result_then_notif() {
        let c = zc_completion(&[cqe(1, 10, MORE), cqe(2, 0, 0), cqe(1, 0, NOTIF)], 1).unwrap();
        assert_eq!(c.result.res, 10);
        assert!(c.notif.is_some());
    }

    #[test]
    fn rejects_protocol_violations() {
        assert!(zc_completion(&[cqe(1, 0, NOTIF), cqe(1, 10, MORE)], 1).is_err());
        assert!(zc_completion(&[cqe(1, 10, MORE)], 1).is_err());
        assert!(zc_completion(&[cqe(1, 10, MORE), cqe(1, 0, NOTIF), cqe(1, 0, NOTIF)], 1).is_err());
        assert!(zc_completion(&[cqe(1, 10, 0), cqe(1, 0, NOTIF)], 1).is_err());
        assert!(zc_completion(&[cqe(2, 10, 0)], 1).is_err());
    }

    #[test]
    fn accepts_error_without_notif() {
        let c = zc_completion(&[cqe(7, -95, 0)], 7).unwrap();
        assert!(c.notif.is_none());
    }
}
