//! Per-iovec copy / zero-copy / registered-buffer sends for io_uring.
//!
//! - [`frame`]: send (header, payload) pairs as one request on your own
//!   ring: headers copied, payloads zero-copied from registered buffers
//!   ([`frame::TxPool`] leases) or owned memory, in order per stream, with
//!   fallbacks on kernels without the series. Start here.
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
