//! A zero-copy send cancelled because the request it is linked to failed.
//!
//! Applications rely on one rule: a notification follows a zero-copy
//! send's result CQE if and only if that CQE has IORING_CQE_F_MORE. Plain
//! 7.3 breaks it on the failed-link path: the send completes with
//! -ECANCELED and no F_MORE, and its notification follows anyway, because
//! that path sets the result without the opcode's ->fail() handler (which
//! is what adds F_MORE). The fix is the first patch of the series; these
//! tests fail on the base kernel.

use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types};
use rstest::rstest;
use sendzc_iov_vm_tests::{pattern, zc_completion, Cqe, Family, Ring, TcpPair};

const HEAD: u64 = 1;
const SEND: u64 = 2;

#[derive(Clone, Copy, Debug)]
enum SendOp {
    SendZc,
    SendMsgZc,
}

/// The data a send carries, and the msghdr SENDMSG_ZC needs for it.
struct Message {
    data: Vec<u8>,
    iov: Box<libc::iovec>,
    msg: Box<libc::msghdr>,
}

impl Message {
    fn new(len: usize) -> Message {
        let data = pattern(len, 3);
        let iov = Box::new(libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        });
        // SAFETY: msghdr is plain data; all-zero is an empty message.
        let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msg.msg_iov = &*iov as *const libc::iovec as *mut libc::iovec;
        msg.msg_iovlen = 1;
        Message { data, iov, msg }
    }

    fn sqe(&self, op: SendOp, fd: i32) -> squeue::Entry {
        let entry = match op {
            SendOp::SendZc => {
                opcode::SendZc::new(types::Fd(fd), self.data.as_ptr(), self.iov.iov_len as u32)
                    .build()
            }
            SendOp::SendMsgZc => opcode::SendMsgZc::new(types::Fd(fd), &*self.msg).build(),
        };
        entry.user_data(SEND)
    }
}

/// Queues [POLL_ADD on a bad fd, linked to the send] and submits them: the
/// poll fails at submission with -EBADF and the send is cancelled.
fn submit_failing_link(ring: &mut Ring, head_flags: squeue::Flags, send: squeue::Entry) {
    let head = opcode::PollAdd::new(types::Fd(-1), libc::POLLIN as u32)
        .build()
        .flags(squeue::Flags::IO_LINK | head_flags)
        .user_data(HEAD);
    // SAFETY: the send's buffers live in the caller's Message until the
    // caller has reaped every CQE.
    unsafe {
        ring.push(&head).unwrap();
        ring.push(&send).unwrap();
    }
}

fn head_failed(cqes: &[Cqe]) {
    let head: Vec<&Cqe> = cqes.iter().filter(|c| c.user_data == HEAD).collect();
    assert!(matches!(head[..], [c] if c.res == -libc::EBADF), "{cqes:?}");
}

#[rstest]
fn cancelled_send_keeps_the_notification_rule(
    #[values(SendOp::SendZc, SendOp::SendMsgZc)] op: SendOp,
) {
    let pair = TcpPair::new(Family::V4).unwrap();
    let mut ring = Ring::new(8).unwrap();
    let message = Message::new(1000);
    submit_failing_link(
        &mut ring,
        squeue::Flags::empty(),
        message.sqe(op, pair.tx.as_raw_fd()),
    );

    let cqes = ring.reap_zc(SEND).unwrap();
    head_failed(&cqes);
    let send: Vec<Cqe> = cqes
        .iter()
        .copied()
        .filter(|c| c.user_data != HEAD)
        .collect();
    let done = zc_completion(&send, SEND).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    assert_eq!(done.result.res, -libc::ECANCELED, "{cqes:?}");
    // A prepared zero-copy send posts its notification whatever its result,
    // as it does for any other failure: the result says so with F_MORE.
    assert!(done.notif.is_some(), "{cqes:?}");
    assert!(
        !pair.pending().unwrap(),
        "a cancelled send put bytes on the wire"
    );
}

/// IOSQE_CQE_SKIP_SUCCESS on the failing head skips the CQEs of the
/// requests linked to it. A send whose result is skipped must not post a
/// notification either: nobody would be told to expect it.
#[rstest]
fn skipped_cancelled_send_posts_no_notification(
    #[values(SendOp::SendZc, SendOp::SendMsgZc)] op: SendOp,
) {
    let pair = TcpPair::new(Family::V4).unwrap();
    let mut ring = Ring::new(8).unwrap();
    let message = Message::new(1000);
    let skip = squeue::Flags::SKIP_SUCCESS;
    submit_failing_link(&mut ring, skip, message.sqe(op, pair.tx.as_raw_fd()));

    let cqes = ring
        .reap_until(|c| c.iter().any(|c| c.user_data == HEAD))
        .unwrap();
    let mut all = cqes.clone();
    // Whatever else the cancelled send posts arrives within the grace
    // period (it is posted from the same task work as the head's CQE).
    let extra = ring.expect_no_more_cqes();
    head_failed(&all);
    all.retain(|c| c.user_data != HEAD);
    assert!(all.is_empty(), "{op:?}: CQEs of a skipped send: {all:?}");
    extra.unwrap_or_else(|e| panic!("{op:?}: {e}"));
    assert!(
        !pair.pending().unwrap(),
        "a cancelled send put bytes on the wire"
    );
}
