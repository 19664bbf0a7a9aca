//! Where each service's selection table lives in the shared `SLOTS` array: ranges handed
//! out first-fit and coalesced on release. 4 bytes per slot (the map packs
//! `lb_common::SLOTS_PER_ENTRY` slots an element, so the kernel's 8-byte element rounding
//! costs nothing): 10 000 services of 10 backends at the default sizing (1801 slots each)
//! take 68.7 MiB.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct SlotRanges {
    capacity: u32,
    /// Free ranges: offset -> length, never adjacent (coalesced).
    free: BTreeMap<u32, u32>,
}

impl SlotRanges {
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        SlotRanges { capacity, free }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots not in use.
    pub fn available(&self) -> u64 {
        self.free.values().map(|&l| l as u64).sum()
    }

    /// Where [`SlotRanges::allocate`] would put `len` slots, without taking them
    /// ([`SlotRanges::reserve`] does).
    pub fn find(&self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        self.free
            .iter()
            .find(|&(_, &l)| l >= len)
            .map(|(&off, _)| off)
    }

    /// A free range of `len` slots (first fit), or `None` if no free range is that long.
    pub fn allocate(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&off, &flen) = self.free.iter().find(|&(_, &l)| l >= len)?;
        self.free.remove(&off);
        if flen > len {
            self.free.insert(off + len, flen - len);
        }
        Some(off)
    }

    /// Marks `[off, off + len)` as used (restoring state); false if it is not free.
    pub fn reserve(&mut self, off: u32, len: u32) -> bool {
        if len == 0 {
            return true;
        }
        let Some((&foff, &flen)) = self.free.range(..=off).next_back() else {
            return false;
        };
        if off + len > foff + flen {
            return false;
        }
        self.free.remove(&foff);
        if off > foff {
            self.free.insert(foff, off - foff);
        }
        if foff + flen > off + len {
            self.free.insert(off + len, foff + flen - off - len);
        }
        true
    }

    /// Marks every free slot of `[off, off + len)` as used (restoring state that may be
    /// inconsistent: a slot a frontend names must never be handed out); true if all of them
    /// were free.
    pub fn reserve_overlapping(&mut self, off: u32, len: u32) -> bool {
        let end = off.saturating_add(len);
        let mut all_free = true;
        let mut at = off;
        while at < end {
            // The free range holding `at`, else the next one starting before `end`.
            let holding = self
                .free
                .range(..=at)
                .next_back()
                .filter(|&(&f, &l)| f + l > at)
                .map(|(&f, &l)| (f, l));
            match holding {
                Some((f, l)) => {
                    let stop = (f + l).min(end);
                    let reserved = self.reserve(at, stop - at);
                    debug_assert!(reserved);
                    at = stop;
                }
                None => {
                    all_free = false;
                    at = match self.free.range(at..end).next() {
                        Some((&f, _)) => f,
                        None => end,
                    };
                }
            }
        }
        all_free
    }

    pub fn release(&mut self, off: u32, len: u32) {
        if len == 0 {
            return;
        }
        let (mut start, mut end) = (off, off + len);
        if let Some((&poff, &plen)) = self.free.range(..off).next_back()
            && poff + plen == off
        {
            self.free.remove(&poff);
            start = poff;
        }
        if let Some(&nlen) = self.free.get(&end) {
            self.free.remove(&end);
            end += nlen;
        }
        self.free.insert(start, end - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ranges_first_fit_and_coalesce() {
        let mut r = SlotRanges::new(100);
        let a = r.allocate(30).unwrap();
        let b = r.allocate(30).unwrap();
        let c = r.allocate(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(r.allocate(11), None);
        r.release(b, 30);
        assert_eq!(r.allocate(20), Some(30));
        r.release(30, 20);
        r.release(a, 30);
        r.release(c, 30);
        assert_eq!(r.available(), 100);
        assert_eq!(r.allocate(100), Some(0));
    }

    #[test]
    fn slot_ranges_reserve_restores_state() {
        let mut r = SlotRanges::new(100);
        assert!(r.reserve(10, 5));
        assert!(!r.reserve(12, 5));
        assert_eq!(r.allocate(10), Some(0));
        assert_eq!(r.allocate(1), Some(15));
        assert_eq!(r.available(), 84);
    }

    #[test]
    fn slot_ranges_reserve_overlapping_takes_every_free_slot_of_the_range() {
        let mut r = SlotRanges::new(100);
        assert!(r.reserve(10, 10));
        assert!(r.reserve_overlapping(30, 10));
        // 5..25 overlaps 10..20: its free parts 5..10 and 20..25 are taken, and it says so.
        assert!(!r.reserve_overlapping(5, 20));
        assert_eq!(r.available(), 100 - 10 - 10 - 10);
        assert_eq!(r.allocate(5), Some(0));
        assert_eq!(r.allocate(5), Some(25));
        assert_eq!(r.allocate(1), Some(40));
        // Entirely used: nothing changes.
        assert!(!r.reserve_overlapping(10, 10));
        assert_eq!(r.available(), 59);
    }
}
