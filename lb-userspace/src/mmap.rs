//! `BPF_F_MMAPABLE` arrays mapped into this process, so bulk writes (a selection table of a
//! thousand slots, a service's backends) are plain stores instead of one `bpf` syscall per
//! element. aya 0.14 has no batch operations; an mmap is cheaper than batching anyway.
//!
//! The mapping is shared with the kernel: the XDP program reads the same memory while we
//! write it, and so may another process that mapped the same (pinned) map. Every access
//! therefore goes through [`AtomicU32`] (aligned 4-byte loads and stores the compiler can
//! neither elide nor tear), and every unsafe operation of the crate's map memory is in this
//! file.
//!
//! Ordering: stores are `Release`, so a reader that sees a store also sees every earlier
//! write of this thread (a backend entry before the slot that names it; on x86 this is a
//! plain `mov`). A later `bpf` syscall (the `SERVICES` update that puts a fresh table in
//! force) publishes with release semantics in the kernel, which orders all our earlier
//! stores before the XDP reader can find the new table: the make-before-break order of
//! the planner (`lb_datapath::program::plan`) holds with mmap writes as it did with syscalls.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{Pod, maps::MapData};
use lb_common::map_flags;

use crate::error::Error;

/// A `BPF_F_MMAPABLE` `BPF_MAP_TYPE_ARRAY`, mapped whole, seen as 4-byte words.
pub(crate) struct MmapArray {
    name: &'static str,
    base: NonNull<AtomicU32>,
    /// Bytes mapped.
    len: usize,
    /// Words from one element to the next: the kernel stores an element in its value size
    /// rounded up to 8 bytes.
    stride: usize,
    /// Words of a value.
    value_words: usize,
    entries: u32,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access is atomic,
// so sharing or moving it between threads is as sound as sharing a `[AtomicU32]`.
unsafe impl Send for MmapArray {}
// SAFETY: as above.
unsafe impl Sync for MmapArray {}

impl std::fmt::Debug for MmapArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapArray")
            .field("name", &self.name)
            .field("entries", &self.entries)
            .field("value_words", &self.value_words)
            .field("writable", &self.writable)
            .finish_non_exhaustive()
    }
}

impl MmapArray {
    /// Maps the whole array `map` (named `name` in errors), read-write or read-only. The map
    /// must be an array created with `BPF_F_MMAPABLE` whose value size is a multiple of 4.
    pub fn new(name: &'static str, map: &MapData, writable: bool) -> Result<Self, Error> {
        let info = map
            .info()
            .map_err(|e| Error::map(name, "read info for mmap", e))?;
        let invalid = |what: String| {
            Error::map(
                name,
                "mmap",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
            )
        };
        if info.map_flags() & map_flags::MMAPABLE == 0 {
            return Err(invalid(
                "the map was not created with BPF_F_MMAPABLE".into(),
            ));
        }
        let value_size = info.value_size() as usize;
        if value_size == 0 || !value_size.is_multiple_of(4) {
            return Err(invalid(format!(
                "value size {value_size} is not a multiple of 4"
            )));
        }
        let elem = value_size.next_multiple_of(8);
        let entries = info.max_entries();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let len = (elem * entries as usize).next_multiple_of(page);
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping (address chosen by the kernel) of a BPF array fd; it
        // aliases no Rust object. The kernel accepts at most the array's page-rounded size
        // from offset 0, which is what `len` is.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::map(name, "mmap", std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<AtomicU32>())
            .ok_or_else(|| invalid("mmap returned a null address".into()))?;
        Ok(MmapArray {
            name,
            base,
            len,
            stride: elem / 4,
            value_words: value_size / 4,
            entries,
            writable,
        })
    }

    /// Number of elements.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The word `word` of element `index`. Panics when out of range (a caller's bug: every
    /// index comes from the bookkeeping, which is bounded by the map's capacity).
    fn word(&self, index: u32, word: usize) -> &AtomicU32 {
        assert!(
            index < self.entries && word < self.value_words,
            "{}: element {index} word {word} out of range ({} elements of {} words)",
            self.name,
            self.entries,
            self.value_words
        );
        let at = index as usize * self.stride + word;
        debug_assert!((at + 1) * 4 <= self.len);
        // SAFETY: `at` is inside the mapping (index < entries, word < value words <= stride,
        // and `len` covers entries x stride words); the base is page-aligned, so the word is
        // 4-byte aligned; the mapping lives as long as `self`; all access to it is atomic.
        unsafe { &*self.base.as_ptr().add(at) }
    }

    /// Loads word `word` of element `index`.
    pub fn load(&self, index: u32, word: usize) -> u32 {
        self.word(index, word).load(Ordering::Acquire)
    }

    /// Stores word `word` of element `index` (release: earlier writes are visible first).
    pub fn store(&self, index: u32, word: usize, value: u32) {
        assert!(self.writable, "{}: mapped read-only", self.name);
        self.word(index, word).store(value, Ordering::Release);
    }

    /// Element `index` as a value of `T`, word by word (a concurrent writer may make it a
    /// mix of old and new words; callers read what only they write, or check a flag).
    pub fn load_value<T: Pod, const N: usize>(&self, index: u32) -> T {
        let mut words = [0u32; N];
        for (w, out) in words.iter_mut().enumerate() {
            *out = self.load(index, w);
        }
        from_words(words)
    }

    /// Stores `value` into element `index`, the words in the order `order` gives (every word
    /// index of the value exactly once), so a reader checking one word (a flag) sees the
    /// others written first, or cleared last.
    pub fn store_value<T: Pod, const N: usize>(&self, index: u32, value: &T, order: [usize; N]) {
        let words: [u32; N] = to_words(value);
        for w in order {
            self.store(index, w, words[w]);
        }
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; no reference into it outlives
        // `self` (every reference borrows `self`).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The 4-byte words of a plain-data value (`N` x 4 must be its size).
pub(crate) fn to_words<T: Pod, const N: usize>(value: &T) -> [u32; N] {
    const { assert!(std::mem::size_of::<T>() == 4 * N) };
    // SAFETY: `T: Pod` has no padding and no invalid bit patterns, and the sizes are equal
    // (asserted at compile time), so its bytes are `N` valid `u32`s; the read is unaligned.
    unsafe { std::ptr::read_unaligned((value as *const T).cast::<[u32; N]>()) }
}

/// A plain-data value from its 4-byte words (`N` x 4 must be its size).
pub(crate) fn from_words<T: Pod, const N: usize>(words: [u32; N]) -> T {
    const { assert!(std::mem::size_of::<T>() == 4 * N) };
    // SAFETY: `T: Pod` is valid for any bit pattern and has exactly this size (asserted at
    // compile time); the read is unaligned.
    unsafe { std::ptr::read_unaligned((&words as *const [u32; N]).cast::<T>()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{Backend, NetAddr, NetPort, backend_flags};

    #[test]
    fn mmap_words_round_trip_a_backend() {
        let b = Backend {
            addr: NetAddr::from_v4_octets([198, 51, 100, 2]),
            port: NetPort::new(8080),
            flags: backend_flags::PRESENT,
            _pad: 0,
            service_id: 7,
            generation: 9,
            _pad2: 0,
        };
        let w: [u32; 8] = to_words(&b);
        assert_eq!((w[5], w[6]), (7, 9));
        let back: Backend = from_words(w);
        assert_eq!(back, b);
    }
}
