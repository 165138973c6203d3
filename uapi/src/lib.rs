//! Per-iovec copy / zero-copy / registered-buffer sends for io_uring.
//!
//! [`sys`] holds the raw uapi of the kernel series in `kernel-patches/`.

pub mod sys;
