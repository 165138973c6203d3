#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod frame;
#[doc(hidden)]
pub mod layout;
pub mod probe;
pub mod sqe;
pub mod sys;
