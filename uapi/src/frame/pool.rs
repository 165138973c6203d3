//! Registered transmit buffers, and the leases that hand out ranges of them.
//!
//! A [`TxPool`] is page-aligned anonymous memory, split into buffers that
//! are registered into the caller's ring at a chosen index range. Ranges
//! of it are handed out as [`Lease`]s: owned, writable, never two over the
//! same bytes. A lease moves into a [`Payload`](super::Payload) and comes
//! back in [`Event::Released`](super::Event::Released), once the kernel is
//! done with it. The memory lives until the pool and every lease are gone,
//! and a request in flight holds its leases: dropping the pool, or
//! replacing it, frees nothing the kernel may still send.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut, Range};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::IoUring;

/// The memory of a pool and the free ranges of each of its buffers.
struct Region {
    base: *mut u8,
    /// Bytes per buffer, a multiple of the page size.
    stride: usize,
    buffers: u16,
    free: Mutex<Vec<Vec<Range<usize>>>>,
    /// The ring and first table index the buffers are registered at.
    registered: Mutex<Option<(RawFd, u16)>>,
}

// SAFETY: the region's bytes are only reached through leases, each of which
// owns a range no other lease overlaps (the free lists hand each byte out
// once); the bookkeeping is behind mutexes.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` gives access to no byte of the memory.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        let registered = *self.registered.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((fd, first)) = registered {
            // Another pool may take these indices now: nothing of ours can
            // name them any more.
            let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
            tables.retain(|(f, r)| !(*f == fd && r.start == u32::from(first)));
        }
        // SAFETY: `base` is the start of the mapping of `len()` bytes made in
        // TxPool::new; no lease is left (each holds an Arc of the region), so
        // nothing in this process refers to it. A ring that still has it
        // registered holds its own references to the pages.
        unsafe { libc::munmap(self.base.cast(), self.len()) };
    }
}

impl Region {
    fn len(&self) -> usize {
        self.stride * self.buffers as usize
    }

    fn free(&self) -> MutexGuard<'_, Vec<Vec<Range<usize>>>> {
        // A panic while holding the lock leaves the lists consistent (every
        // change is a single push, remove or splice), so poison is ignored.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `len` bytes (first fit) from buffer `buf`.
    fn take(&self, buf: u16, len: usize) -> Option<Range<usize>> {
        let mut free = self.free();
        let list = &mut free[buf as usize];
        let at = list.iter().position(|r| r.len() >= len)?;
        let start = list[at].start;
        list[at].start += len;
        if list[at].is_empty() {
            list.remove(at);
        }
        Some(start..start + len)
    }

    /// Gives `range` of buffer `buf` back, merging it with its neighbours.
    fn give(&self, buf: u16, range: Range<usize>) {
        let mut free = self.free();
        let list = &mut free[buf as usize];
        let at = list.partition_point(|r| r.start < range.start);
        list.insert(at, range);
        if at + 1 < list.len() && list[at].end == list[at + 1].start {
            list[at].end = list.remove(at + 1).end;
        }
        if at > 0 && list[at - 1].end == list[at].start {
            list[at - 1].end = list.remove(at).end;
        }
    }
}

/// Registered transmit buffers, indexed from 0 within the pool.
pub struct TxPool {
    region: Arc<Region>,
}

impl fmt::Debug for TxPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxPool")
            .field("buffers", &self.region.buffers)
            .field("buffer_len", &self.region.stride)
            .finish()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Table ranges registered per ring, so that two pools never share an index.
static TABLES: Mutex<Vec<(RawFd, Range<u32>)>> = Mutex::new(Vec::new());

impl TxPool {
    /// `buffers` buffers of at least `buffer_len` bytes each (rounded up to
    /// whole pages), zeroed, not yet registered.
    pub fn new(buffers: u16, buffer_len: usize) -> io::Result<TxPool> {
        let page = page_size();
        let stride = buffer_len
            .checked_next_multiple_of(page)
            .filter(|s| *s > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad buffer length"))?;
        let len = stride
            .checked_mul(buffers as usize)
            .filter(|l| *l > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad pool size"))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched, and failure is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let free = (0..buffers)
            .map(|_| std::iter::once(0..stride).collect())
            .collect();
        Ok(TxPool {
            region: Arc::new(Region {
                base: base.cast(),
                stride,
                buffers,
                free: Mutex::new(free),
                registered: Mutex::new(None),
            }),
        })
    }

    /// Number of buffers.
    pub fn buffers(&self) -> u16 {
        self.region.buffers
    }

    /// Bytes per buffer.
    pub fn buffer_len(&self) -> usize {
        self.region.stride
    }

    /// Registers the buffers into `ring`'s table at indices `first..`,
    /// which the caller has created with `register_buffers_sparse` and does
    /// not use for anything else. A pool is registered once; two pools may
    /// not overlap in one ring's table.
    pub fn register(&self, ring: &IoUring, first: u16) -> io::Result<()> {
        let mut registered = self
            .region
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if registered.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the pool is already registered",
            ));
        }
        let fd = ring.as_raw_fd();
        let want = u32::from(first)..u32::from(first) + u32::from(self.region.buffers);
        let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
        if tables
            .iter()
            .any(|(f, r)| *f == fd && r.start < want.end && want.start < r.end)
        {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another pool is registered at these indices of this ring",
            ));
        }
        let iovecs: Vec<libc::iovec> = (0..self.region.buffers as usize)
            .map(|b| libc::iovec {
                // SAFETY: b < buffers, so the offset is inside the mapping.
                iov_base: unsafe { self.region.base.add(b * self.region.stride) }.cast(),
                iov_len: self.region.stride,
            })
            .collect();
        // SAFETY: the iovecs describe the pool's mapping, which stays mapped
        // while the pool or any lease exists; after that the kernel keeps
        // the pages it pinned for as long as they stay registered.
        unsafe {
            ring.submitter()
                .register_buffers_update(u32::from(first), &iovecs, None)?
        };
        tables.push((fd, want));
        *registered = Some((fd, first));
        Ok(())
    }

    /// Leases `len` bytes (at least 1) from the first buffer with room.
    pub fn lease(&self, len: usize) -> Option<Lease> {
        (0..self.region.buffers).find_map(|buf| self.lease_in(buf, len))
    }

    /// Leases `len` bytes (at least 1) from buffer `buf`.
    pub fn lease_in(&self, buf: u16, len: usize) -> Option<Lease> {
        if len == 0 || buf >= self.region.buffers {
            return None;
        }
        let range = self.region.take(buf, len)?;
        Some(Lease {
            region: Arc::clone(&self.region),
            buf,
            range,
        })
    }

    /// Free bytes in buffer `buf` (in however many pieces).
    pub fn free_bytes(&self, buf: u16) -> usize {
        self.region
            .free()
            .get(buf as usize)
            .map_or(0, |l| l.iter().map(|r| r.len()).sum())
    }
}

/// An exclusive, writable range of a [`TxPool`] buffer. Dropping it gives
/// the range back to the pool.
pub struct Lease {
    region: Arc<Region>,
    buf: u16,
    range: Range<usize>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("buf", &self.buf)
            .field("range", &self.range)
            .finish()
    }
}

impl Lease {
    /// The buffer, within its pool.
    pub fn buf(&self) -> u16 {
        self.buf
    }

    /// The leased bytes' offsets in the buffer.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The ring table index and ring the buffer is registered at, if it is.
    pub(crate) fn registration(&self) -> Option<(RawFd, u16)> {
        let registered = *self
            .region
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        registered.map(|(fd, first)| (fd, first + self.buf))
    }

    /// The first byte, for the kernel.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.bytes().as_ptr()
    }

    /// True if `other` is a lease of the same pool.
    pub(crate) fn same_pool(&self, other: &Lease) -> bool {
        Arc::ptr_eq(&self.region, &other.region)
    }

    /// A fresh lease of `len` bytes in the same buffer, if it has room.
    pub(crate) fn sibling(&self, len: usize) -> Option<Lease> {
        TxPool {
            region: Arc::clone(&self.region),
        }
        .lease_in(self.buf, len)
    }

    fn bytes(&self) -> &[u8] {
        let offset = self.buf as usize * self.region.stride + self.range.start;
        // SAFETY: the range lies inside buffer `buf` of the mapping, which the
        // Arc keeps mapped, and this lease is the only one holding it.
        unsafe { std::slice::from_raw_parts(self.region.base.add(offset), self.range.len()) }
    }
}

impl Deref for Lease {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut [u8] {
        let offset = self.buf as usize * self.region.stride + self.range.start;
        // SAFETY: as in bytes(); `&mut self` makes this the only reference to
        // the range, and a lease in a request in flight is owned by the
        // request, so nobody can reach it while the kernel may read it.
        unsafe { std::slice::from_raw_parts_mut(self.region.base.add(offset), self.range.len()) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.region.give(self.buf, self.range.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_never_overlap_and_come_back_merged() {
        let pool = TxPool::new(1, 4096).unwrap();
        let a = pool.lease(1000).unwrap();
        let b = pool.lease(1000).unwrap();
        assert_eq!(a.range(), 0..1000);
        assert_eq!(b.range(), 1000..2000);
        assert_eq!(pool.free_bytes(0), 4096 - 2000);
        drop(a);
        let c = pool.lease(3000);
        assert!(c.is_none(), "no 3000 contiguous bytes while b is out");
        drop(b);
        assert_eq!(pool.free_bytes(0), 4096);
        assert_eq!(pool.lease(4096).unwrap().range(), 0..4096);
    }

    #[test]
    fn a_lease_outlives_its_pool() {
        let pool = TxPool::new(2, 100).unwrap();
        assert_eq!(pool.buffer_len(), page_size());
        let mut lease = pool.lease_in(1, 8).unwrap();
        drop(pool);
        lease.copy_from_slice(b"survives");
        assert_eq!(&lease[..], b"survives");
    }

    #[test]
    fn refuses_empty_and_unknown() {
        let pool = TxPool::new(1, 4096).unwrap();
        assert!(pool.lease(0).is_none());
        assert!(pool.lease_in(1, 1).is_none());
        assert!(TxPool::new(0, 4096).is_err());
        assert!(TxPool::new(1, 0).is_err());
    }

    #[test]
    fn two_pools_cannot_share_table_indices() {
        let ring = IoUring::new(4).unwrap();
        ring.submitter().register_buffers_sparse(8).unwrap();
        let a = TxPool::new(4, 4096).unwrap();
        let b = TxPool::new(4, 4096).unwrap();
        a.register(&ring, 0).unwrap();
        assert!(a.register(&ring, 4).is_err(), "registered twice");
        assert_eq!(
            b.register(&ring, 2).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        b.register(&ring, 4).unwrap();
        assert_eq!(a.lease_in(3, 1).unwrap().registration().unwrap().1, 3);
        assert_eq!(b.lease_in(1, 1).unwrap().registration().unwrap().1, 5);
    }
}
