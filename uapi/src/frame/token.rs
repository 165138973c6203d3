//! The user_data of a request's CQEs: secret, so that a CQE cannot be forged.
//!
//! Safe code can give [`SendCore::complete`](super::SendCore::complete) any
//! CQE: one of its own NOPs, or a real CQE with `set_user_data()`. What it
//! cannot do is guess a value it has never seen. Every CQE a request can
//! post gets its own token: a tag (the top byte, for the caller's routing)
//! and 56 bits drawn from a keyed hash of a counter, keyed by 128 bits from
//! `getrandom(2)`. The result CQE's token is seen by whoever reaps it; the
//! notification's is a different one (`sqe->addr3`), unknown until the
//! notification itself arrives, which is what releases the memory. Each
//! token is accepted once.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io;

/// Bits of a token below the tag.
const TAG_SHIFT: u32 = 56;

pub(crate) struct Tokens {
    key: [u8; 16],
    counter: u64,
    tag: u8,
}

impl Tokens {
    /// Tokens tagged `tag`, keyed from the kernel's random pool.
    pub(crate) fn new(tag: u8) -> io::Result<Tokens> {
        let mut key = [0u8; 16];
        let mut filled = 0;
        while filled < key.len() {
            // SAFETY: getrandom writes at most the given length into the
            // given buffer, which is the unfilled tail of `key`.
            let n = unsafe {
                libc::getrandom(key[filled..].as_mut_ptr().cast(), key.len() - filled, 0)
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            filled += n as usize;
        }
        Ok(Tokens {
            key,
            counter: 0,
            tag,
        })
    }

    /// The next token; never 0, and never one handed out before.
    pub(crate) fn next(&mut self) -> u64 {
        self.counter += 1;
        // SipHash keyed by the secret (its input here), then the counter:
        // outputs cannot be predicted from earlier ones without the key.
        let mut h = DefaultHasher::new();
        h.write(&self.key);
        h.write_u64(self.counter);
        let low = h.finish() & ((1 << TAG_SHIFT) - 1);
        (u64::from(self.tag) << TAG_SHIFT) | low.max(1)
    }

    /// True if `user_data` carries this tag (it may still not be a token).
    pub(crate) fn tagged(&self, user_data: u64) -> bool {
        (user_data >> TAG_SHIFT) as u8 == self.tag
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_tagged_and_distinct() {
        let mut t = Tokens::new(0xa5).unwrap();
        let a: Vec<u64> = (0..1000).map(|_| t.next()).collect();
        assert!(a.iter().all(|&x| t.tagged(x) && x >> 56 == 0xa5));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), a.len());
        assert!(!t.tagged(1));
    }

    #[test]
    fn two_keys_give_two_sequences() {
        let mut a = Tokens::new(1).unwrap();
        let mut b = Tokens::new(1).unwrap();
        assert_ne!(a.next(), b.next());
    }
}
