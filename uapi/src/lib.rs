//! Per-iovec copy / zero-copy / registered-buffer sends for io_uring.
//!
//! - [`sys`]: the raw uapi of the kernel series in `kernel-patches/`.
//! - [`sqe`]: submission entries carrying the new fields, for the
//!   `io-uring` crate.
//! - [`probe`]: whether the running kernel has the feature.

#![warn(missing_docs)]

pub mod frame;
#[doc(hidden)]
pub mod layout;
pub mod probe;
pub mod sqe;
pub mod sys;
