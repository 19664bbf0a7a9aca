//! Id allocation for services and backends: ids are 1..=capacity, 0 means "none".

use std::collections::BTreeSet;

/// Hands out the lowest free id; freed ids are reused.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    capacity: u32,
    next_fresh: u32,
    free: BTreeSet<u32>,
}

impl IdAllocator {
    pub fn new(capacity: u32) -> Self {
        IdAllocator {
            capacity,
            next_fresh: 1,
            free: BTreeSet::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Ids that can still be handed out.
    pub fn available(&self) -> u32 {
        self.capacity + 1 - self.next_fresh + self.free.len() as u32
    }

    pub fn allocate(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next_fresh > self.capacity {
            return None;
        }
        let id = self.next_fresh;
        self.next_fresh += 1;
        Some(id)
    }

    /// The ids the next `n` calls of [`IdAllocator::allocate`] would hand out, without
    /// handing them out (fewer if fewer are available). [`IdAllocator::reserve`] takes them.
    pub fn peek(&self, n: usize) -> Vec<u32> {
        let fresh = (self.next_fresh..=self.capacity).take(n.saturating_sub(self.free.len()));
        self.free.iter().copied().take(n).chain(fresh).collect()
    }

    /// Marks `id` as in use (restoring state); false if out of range.
    pub fn reserve(&mut self, id: u32) -> bool {
        if id == 0 || id > self.capacity {
            return false;
        }
        while self.next_fresh <= id {
            self.free.insert(self.next_fresh);
            self.next_fresh += 1;
        }
        self.free.remove(&id);
        true
    }

    pub fn release(&mut self, id: u32) {
        debug_assert!(id != 0 && id < self.next_fresh);
        if id == 0 || id >= self.next_fresh {
            return;
        }
        self.free.insert(id);
        // Shrink the fresh range so a fully freed allocator is as new.
        while self.next_fresh > 1 && self.free.remove(&(self.next_fresh - 1)) {
            self.next_fresh -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_names_what_allocate_hands_out() {
        let mut ids = IdAllocator::new(6);
        for _ in 0..4 {
            ids.allocate();
        }
        ids.release(2);
        assert_eq!(ids.peek(3), vec![2, 5, 6]);
        assert_eq!(ids.peek(9), vec![2, 5, 6]);
        let handed: Vec<u32> = (0..3).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(handed, vec![2, 5, 6]);
        assert!(ids.peek(1).is_empty());
    }

    #[test]
    fn ids_start_at_one_and_respect_capacity() {
        let mut a = IdAllocator::new(3);
        assert_eq!(
            (a.allocate(), a.allocate(), a.allocate(), a.allocate()),
            (Some(1), Some(2), Some(3), None)
        );
        a.release(2);
        assert_eq!(a.available(), 1);
        assert_eq!(a.allocate(), Some(2));
    }

    #[test]
    fn reserve_restores_holes() {
        let mut a = IdAllocator::new(10);
        assert!(a.reserve(4));
        assert!(!a.reserve(0));
        assert!(!a.reserve(11));
        assert_eq!(a.allocate(), Some(1));
        assert_eq!(a.available(), 10 - 2);
        a.release(4);
        a.release(1);
        assert_eq!(a.available(), 10);
    }
}
