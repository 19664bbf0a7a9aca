//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624 eq. 3).
//!
//! All values are raw 16-bit words as read from the packet in native order: one's-complement
//! sums commute with byte swapping, so the result is again a raw word to store as is.

/// Folds a 32-bit accumulator to 16 bits with end-around carry.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub const fn update16(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u32 + (!old) as u32 + new as u32;
    !fold(sum)
}

/// Checksum after one 32-bit word (raw, as in memory) changed from `old` to `new`.
#[inline(always)]
pub const fn update32(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u32
        + (!(old as u16)) as u32
        + (!((old >> 16) as u16)) as u32
        + (new as u16) as u32
        + ((new >> 16) as u16) as u32;
    !fold(sum)
}

/// Checksum after a sequence of 32-bit words changed (an address).
#[inline(always)]
pub fn update_words(mut check: u16, old: &[u32], new: &[u32]) -> u16 {
    let mut i = 0;
    while i < old.len() && i < new.len() {
        check = update32(check, old[i], new[i]);
        i += 1;
    }
    check
}

/// Adds the change of one 16-bit word from `old` to `new` to a one's-complement difference
/// `acc` (kept folded to 16 bits), for [`apply`] or the kernel's checksum helpers.
#[inline(always)]
pub const fn add16(acc: u32, old: u16, new: u16) -> u32 {
    fold(acc + (!old) as u32 + new as u32) as u32
}

/// [`add16`] for a 32-bit word (raw, as in memory).
#[inline(always)]
pub const fn add32(acc: u32, old: u32, new: u32) -> u32 {
    add16(
        add16(acc, old as u16, new as u16),
        (old >> 16) as u16,
        (new >> 16) as u16,
    )
}

/// Checksum after the changes summed in `diff` (RFC 1624 eq. 3, all words at once).
#[inline(always)]
pub const fn apply(check: u16, diff: u32) -> u16 {
    !fold((!check) as u32 + diff)
}

/// A UDP checksum of 0 means "no checksum" (IPv4); a computed 0 is sent as 0xffff.
#[inline(always)]
pub const fn udp_finish(check: u16) -> u16 {
    if check == 0 { 0xffff } else { check }
}

/// Accumulates raw 16-bit words of `data` (odd trailing byte padded with zero) into `sum`.
pub fn accumulate(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [b] = chunks.remainder() {
        sum += u16::from_ne_bytes([*b, 0]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Full checksum of `data` as a raw word (the value to store in the checksum field, with the
/// field itself zero in `data`).
pub fn compute(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic generator (no dependency needed for a property test).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 16) as u32
        }
    }

    fn word(data: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
    }

    /// Incremental updates of a 4-byte and a 2-byte field equal a full recomputation, for
    /// many random buffers and replacements (including all-ones and zero words).
    #[test]
    fn csum_incremental_update_matches_full_recomputation() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let len = 8 + (rng.next() % 60) as usize * 2;
            let mut data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if round % 7 == 0 {
                data[..4].copy_from_slice(&[0xff; 4]);
            }
            // Checksum field at 0..2, a 32-bit field at 4..8, a 16-bit field at 2..4.
            data[0] = 0;
            data[1] = 0;
            let check = compute(&data);
            let old32 = word(&data, 4);
            let new32 = if round % 5 == 0 { 0 } else { rng.next() };
            let old16 = u16::from_ne_bytes([data[2], data[3]]);
            let new16 = if round % 3 == 0 {
                0xffff
            } else {
                rng.next() as u16
            };
            data[4..8].copy_from_slice(&new32.to_ne_bytes());
            data[2..4].copy_from_slice(&new16.to_ne_bytes());
            let incremental = update16(update32(check, old32, new32), old16, new16);
            assert_eq!(incremental, compute(&data), "round {round}");
        }
    }

    /// A difference summed with `add32`/`add16` and applied at once gives what the chained
    /// updates give (the XDP and TC paths build their L4 checksums one way each).
    #[test]
    fn csum_summed_difference_matches_chained_updates() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for round in 0..20_000 {
            let check = if round % 11 == 0 {
                0xffff
            } else {
                rng.next() as u16
            };
            let (a, b) = (rng.next(), if round % 5 == 0 { 0 } else { rng.next() });
            let (c, d) = (
                rng.next(),
                if round % 7 == 0 { u32::MAX } else { rng.next() },
            );
            let (p, q) = (
                rng.next() as u16,
                if round % 3 == 0 { 0 } else { rng.next() as u16 },
            );
            let chained = update16(update32(update32(check, a, b), c, d), p, q);
            let pseudo = add32(add32(0, a, b), c, d);
            let data = add16(0, p, q);
            assert_eq!(apply(apply(check, pseudo), data), chained, "round {round}");
        }
    }

    #[test]
    fn csum_update_words_matches_full_recomputation() {
        let mut data = [0u8; 40];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        data[0] = 0;
        data[1] = 0;
        let check = compute(&data);
        let old = [
            word(&data, 8),
            word(&data, 12),
            word(&data, 16),
            word(&data, 20),
        ];
        let new = [1u32, 0xdead_beef, 0, 0xffff_ffff];
        for (i, w) in new.iter().enumerate() {
            data[8 + i * 4..12 + i * 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(update_words(check, &old, &new), compute(&data));
    }

    #[test]
    fn csum_udp_zero_is_sent_as_all_ones() {
        assert_eq!(udp_finish(0), 0xffff);
        assert_eq!(udp_finish(0x1234), 0x1234);
    }

    #[test]
    fn csum_fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
    }
}
