//! A bounded pool of large byte buffers, lent while bytes move and given back when idle.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A bounded pool of byte buffers of one size.
///
/// It lends at most `max_lent` buffers at once and keeps at most `max_spare` for reuse, so
/// however many connections move data together, the memory it pins stays under
/// `(max_lent + max_spare) × size` bytes. A [`LentBuffer`] goes back to its pool when it is
/// dropped. Pools live in `static`s (`new` is `const`): a lent buffer refers to its pool for
/// the whole life of the process.
///
/// ```
/// use streamproxy_tls::BufferPool;
///
/// static POOL: BufferPool = BufferPool::new(64 * 1024, 2, 4);
/// let buf = POOL.lend().expect("the pool has lent nothing yet");
/// assert_eq!(buf.len(), 64 * 1024);
/// drop(buf);
/// assert_eq!((POOL.lent(), POOL.spare()), (0, 1));
/// ```
pub struct BufferPool {
    size: usize,
    max_spare: usize,
    max_lent: usize,
    spare: Mutex<Vec<Box<[u8]>>>,
    lent: AtomicUsize,
}

impl BufferPool {
    /// A pool of `size`-byte buffers that lends at most `max_lent` at once and keeps at most
    /// `max_spare` for reuse. It allocates nothing until the first [`lend`](Self::lend).
    pub const fn new(size: usize, max_spare: usize, max_lent: usize) -> BufferPool {
        BufferPool {
            size,
            max_spare,
            max_lent,
            spare: Mutex::new(Vec::new()),
            lent: AtomicUsize::new(0),
        }
    }

    /// A buffer of [`size`](Self::size) bytes, or `None` when the pool has lent all it may.
    /// A spare buffer is reused; otherwise a new one is allocated.
    pub fn lend(&'static self) -> Option<LentBuffer> {
        self.lent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_lent).then_some(n + 1)
            })
            .ok()?;
        let bytes = self
            .spare
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice());
        Some(LentBuffer { bytes, pool: self })
    }

    /// The size of each buffer, in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Buffers lent and not given back yet.
    pub fn lent(&self) -> usize {
        self.lent.load(Ordering::Acquire)
    }

    /// Buffers kept for reuse.
    pub fn spare(&self) -> usize {
        self.spare.lock().map_or(0, |spare| spare.len())
    }

    fn give_back(&self, bytes: Box<[u8]>) {
        self.lent.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < self.max_spare {
                spare.push(bytes);
            }
        }
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("size", &self.size)
            .field("max_spare", &self.max_spare)
            .field("max_lent", &self.max_lent)
            .field("lent", &self.lent())
            .field("spare", &self.spare())
            .finish()
    }
}

/// A buffer lent by a [`BufferPool`]; dropping it gives it back.
pub struct LentBuffer {
    bytes: Box<[u8]>,
    pool: &'static BufferPool,
}

impl LentBuffer {
    /// The pool this buffer goes back to.
    pub fn pool(&self) -> &'static BufferPool {
        self.pool
    }
}

impl Deref for LentBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl DerefMut for LentBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }
}

impl Drop for LentBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.bytes));
    }
}

impl fmt::Debug for LentBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentBuffer")
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_at_most_its_bound_and_keeps_at_most_its_spares() {
        static POOL: BufferPool = BufferPool::new(4096, 2, 3);
        let taken: Vec<Option<LentBuffer>> = (0..5).map(|_| POOL.lend()).collect();
        let sizes: Vec<Option<usize>> = taken.iter().map(|b| b.as_ref().map(|b| b.len())).collect();
        assert_eq!(sizes, [Some(4096), Some(4096), Some(4096), None, None]);
        assert_eq!(POOL.lent(), 3);
        drop(taken);
        assert_eq!(POOL.lent(), 0);
        assert_eq!(POOL.spare(), 2, "keeps no more than its bound");
        // A spare is reused, and lending is possible again.
        let again = POOL.lend().expect("lends again");
        assert_eq!(again.len(), 4096);
        assert_eq!((POOL.lent(), POOL.spare()), (1, 1));
    }

    #[test]
    fn a_reused_buffer_is_the_one_given_back() {
        static POOL: BufferPool = BufferPool::new(16, 1, 1);
        let mut first = POOL.lend().expect("lend");
        first[0] = 42;
        let address = first.as_ptr();
        drop(first);
        let second = POOL.lend().expect("lend");
        assert_eq!(second.as_ptr(), address);
        assert_eq!(POOL.spare(), 0);
    }
}
