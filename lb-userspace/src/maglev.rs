//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each backend walks the table in
//! its own permutation and takes turns claiming slots, so every backend owns ~1/N of the
//! slots and adding or removing one backend moves few slots owned by the others.
//!
//! The table is computed here, in userspace; the data path only reads `slot -> backend`.

use crate::config::MaglevConfig;

/// The table size for `backends` backends: the smallest prime >= slots_per_backend x n',
/// where n' is n rounded up to a power of two (so that most scale events keep the size and
/// move only ~1/n of the slots), capped at the largest prime <= max_table_size; 0 for none.
pub fn table_size(cfg: &MaglevConfig, backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    let cap = prev_prime(cfg.max_table_size.max(2));
    let bucket = (backends as u64).next_power_of_two();
    let want = (cfg.slots_per_backend.max(1) as u64 * bucket).min(cap as u64) as u32;
    next_prime(want.max(2)).min(cap)
}

/// The size to use when a table of `current` slots gets `backends` backends: keep the
/// current size while it still gives every backend its share of slots and is at most four
/// times the fresh size (a resize rewrites the whole table and moves most flows).
pub fn resize(cfg: &MaglevConfig, current: u32, backends: usize) -> u32 {
    let fresh = table_size(cfg, backends);
    if backends == 0 || current == 0 {
        return fresh;
    }
    let enough =
        current as u64 >= (cfg.slots_per_backend.max(1) as u64 * backends as u64).min(fresh as u64);
    if enough && current <= fresh.saturating_mul(4) {
        current
    } else {
        fresh
    }
}

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn next_prime(mut n: u32) -> u32 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn prev_prime(mut n: u32) -> u32 {
    while n > 2 && !is_prime(n) {
        n -= 1;
    }
    n
}

/// Stable 64-bit hash of a backend's identity (FNV-1a, seeded); not `std`'s hasher, whose
/// output may change between Rust releases, because every node must build the same table.
fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds the table: `keys[i]` is backend i's identity (e.g. its address bytes); the result
/// holds, for each of the `size` slots, the index into `keys` of the owner.
/// Deterministic: the same keys (in any order), seed and size give the same table.
pub fn build(seed: u32, keys: &[Vec<u8>], size: u32) -> Vec<u32> {
    let m = size as u64;
    if keys.is_empty() || m == 0 {
        return Vec::new();
    }
    // Order-independent: walk backends sorted by key, map back to the caller's indices.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let offset = hash64(seed as u64, &keys[i]) % m;
            let skip = if m > 1 {
                hash64(!(seed as u64), &keys[i]) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (k, &(offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[k] * skip) % m;
            while table[c as usize] != u32::MAX {
                next[k] += 1;
                c = (offset + next[k] * skip) % m;
            }
            table[c as usize] = order[k] as u32;
            next[k] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("198.51.100.{}:8080", i + 2).into_bytes())
            .collect()
    }

    #[test]
    fn maglev_table_size_is_prime_and_scales_with_backends() {
        let cfg = MaglevConfig::default();
        assert_eq!(table_size(&cfg, 0), 0);
        assert_eq!(table_size(&cfg, 1), 211);
        assert_eq!(table_size(&cfg, 3), 809);
        assert_eq!(table_size(&cfg, 4), 809);
        assert_eq!(table_size(&cfg, 5), 1601);
        assert_eq!(table_size(&cfg, 10_000), 65521);
        let small = MaglevConfig {
            slots_per_backend: 100,
            max_table_size: 1000,
        };
        assert_eq!(table_size(&small, 50), 997);
        // Scaling 4 -> 2 -> 4 -> 5 keeps the size until a backend would get < 200 slots.
        assert_eq!(resize(&cfg, 809, 2), 809);
        assert_eq!(resize(&cfg, 809, 1), 809);
        assert_eq!(resize(&cfg, 1601, 1), 211);
        assert_eq!(resize(&cfg, 809, 4), 809);
        assert_eq!(resize(&cfg, 809, 5), 1601);
    }

    #[test]
    fn maglev_every_slot_names_a_backend() {
        let t = build(7, &keys(5), 503);
        assert_eq!(t.len(), 503);
        assert!(t.iter().all(|&b| b < 5));
    }

    #[test]
    fn maglev_balance_within_a_few_percent() {
        for n in [2usize, 3, 4, 10, 33] {
            let size = table_size(&MaglevConfig::default(), n);
            let t = build(1, &keys(n), size);
            let mut counts = vec![0u32; n];
            for &b in &t {
                counts[b as usize] += 1;
            }
            let ideal = size as f64 / n as f64;
            for c in counts {
                let dev = (c as f64 - ideal).abs() / ideal;
                assert!(dev < 0.03, "n={n}: {c} slots vs ideal {ideal:.1}");
            }
        }
    }

    #[test]
    fn maglev_rebuild_is_deterministic_and_order_independent() {
        let k = keys(7);
        let mut rev = k.clone();
        rev.reverse();
        let a = build(3, &k, 701);
        let b = build(3, &rev, 701);
        // Same owner key for every slot, whatever the input order.
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(k[*x as usize], rev[*y as usize]);
        }
        assert_eq!(a, build(3, &k, 701));
    }

    /// Share of the slots owned by the other backends that move when `removed` leaves a
    /// table of `n` backends at the default size (adding it back moves the same slots).
    fn disruption(n: usize, removed: usize, seed: u32) -> f64 {
        let size = table_size(&MaglevConfig::default(), n);
        let all = keys(n);
        let fewer: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, k)| k.clone())
            .collect();
        let (before, after) = (build(seed, &all, size), build(seed, &fewer, size));
        let (mut others, mut moved) = (0u32, 0u32);
        for (b, a) in before.iter().zip(&after) {
            if *b as usize != removed {
                others += 1;
                moved += (all[*b as usize] != fewer[*a as usize]) as u32;
            }
        }
        moved as f64 / others as f64
    }

    /// Disruption at the default size, over N = 2..=40, every removed backend position class
    /// (first, middle, last) and 5 seeds: the mean stays within 2% (the README quotes these
    /// figures; the worst case is bounded too).
    #[test]
    fn maglev_disruption_on_remove_and_add_is_small() {
        let mut all = Vec::new();
        for n in 2..=40usize {
            for seed in 0..5 {
                for removed in [0, n / 2, n - 1] {
                    all.push(disruption(n, removed, seed));
                }
            }
        }
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        let worst = all.iter().copied().fold(0.0, f64::max);
        println!(
            "maglev disruption at the default size: mean {:.2}%, worst {:.2}%",
            mean * 100.0,
            worst * 100.0
        );
        assert!(mean <= 0.02, "mean disruption {mean:.4}");
        assert!(worst <= 0.05, "worst disruption {worst:.4}");
        // The common demo case: 4 backends, one removed.
        for removed in 0..4 {
            assert!(
                disruption(4, removed, 1) <= 0.02,
                "4 backends, removing #{removed}"
            );
        }
    }
}
