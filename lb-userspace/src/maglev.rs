//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each backend walks the table in
//! its own permutation and takes turns claiming slots, so every backend owns ~1/N of the
//! slots and adding or removing one backend moves few slots owned by the others.
//!
//! The table is computed here, in userspace; the data path only reads `slot -> backend`.

use crate::config::MaglevConfig;

/// The table size for `backends` backends: the smallest prime >= slots_per_backend x n,
/// capped at the largest prime <= max_table_size; 0 for none.
///
/// No rounding of n: 10 backends get 1009 slots at 100 a backend (3.9 KiB), not the 1601 a
/// power-of-two rounding would give; [`resize`] keeps a table through moderate scale events
/// instead.
pub fn table_size(cfg: &MaglevConfig, backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    let max = cfg.max_table_size.max(2);
    let want = (cfg.slots_per_backend.max(1) as u64).saturating_mul(backends as u64);
    // The cap (a prime search down from max_table_size, hundreds of divisions) only when
    // no prime lies between the wanted size and max_table_size.
    if want <= max as u64
        && let Some(p) = (want.max(2) as u32..=max).find(|&c| is_prime(c))
    {
        return p;
    }
    prev_prime(max)
}

/// The size to use when a table of `current` slots gets `backends` backends: keep the
/// current size (a resize rewrites the whole table and moves most flows that have no
/// conntrack entry) while it gives every backend at least 3/4 of its share of slots and is
/// at most four times the fresh size. So a freshly sized table survives growth by a third
/// (a rolling update with the default 25% surge does not resize it), and the tables in
/// force hold about 3/4 to 4 x slots_per_backend a backend.
pub fn resize(cfg: &MaglevConfig, current: u32, backends: usize) -> u32 {
    let fresh = table_size(cfg, backends);
    if backends == 0 || current == 0 {
        return fresh;
    }
    let floor = (cfg.slots_per_backend.max(1) as u64 * backends as u64 * 3).div_ceil(4);
    let enough = current as u64 >= floor.min(fresh as u64);
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
/// Each backend's Maglev permutation of a table of `m` slots, (offset, skip), in key order
/// (so the table does not depend on the order of `keys`), with the caller's index of each.
fn permutations(seed: u32, keys: &[Vec<u8>], m: u64) -> (Vec<usize>, Vec<(u64, u64)>) {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    let perms = order
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
    (order, perms)
}

/// Deterministic: the same keys (in any order), seed and size give the same table.
pub fn build(seed: u32, keys: &[Vec<u8>], size: u32) -> Vec<u32> {
    let m = size as u64;
    if keys.is_empty() || m == 0 {
        return Vec::new();
    }
    let (order, perms) = permutations(seed, keys, m);
    // Each backend's position in its permutation, (offset + next x skip) % m, advanced by
    // one addition instead of a multiplication and a division per probe: for c, skip < m,
    // (c + skip) mod m without a branch (it would be unpredictable here): when c + skip < m
    // the subtraction wraps above it and `min` keeps the sum.
    let step = |c: u64, skip: u64| (c + skip).min((c + skip).wrapping_sub(m));
    let mut pos: Vec<u64> = perms.iter().map(|&(offset, _)| offset).collect();
    let mut table = vec![u32::MAX; size as usize];
    let (mut filled, mut k) = (0u64, 0usize);
    while filled < m {
        let skip = perms[k].1;
        let mut c = pos[k];
        while table[c as usize] != u32::MAX {
            c = step(c, skip);
        }
        table[c as usize] = order[k] as u32;
        pos[k] = step(c, skip);
        filled += 1;
        k = if k + 1 == perms.len() { 0 } else { k + 1 };
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

    /// 100 slots a backend, the size DESIGN.md names (independent of the default).
    const HUNDRED: MaglevConfig = MaglevConfig {
        slots_per_backend: 100,
        max_table_size: 65521,
    };

    /// The plain formulation of [`table_size`]: the smallest prime >= the wanted size,
    /// both capped at the largest prime <= max_table_size.
    fn table_size_reference(cfg: &MaglevConfig, backends: usize) -> u32 {
        if backends == 0 {
            return 0;
        }
        let cap = prev_prime(cfg.max_table_size.max(2));
        let want = (cfg.slots_per_backend.max(1) as u64 * backends as u64).min(cap as u64) as u32;
        let mut p = want.max(2);
        while !is_prime(p) {
            p += 1;
        }
        p.min(cap)
    }

    #[test]
    fn maglev_table_size_matches_the_reference_formula() {
        for (spb, max) in [
            (100, 65521),
            (200, 65521),
            (1, 2),
            (7, 100),
            (100, 1000),
            (0, 0),
        ] {
            let cfg = MaglevConfig {
                slots_per_backend: spb,
                max_table_size: max,
            };
            for n in (0..300).chain([1000, 10_000, 100_000]) {
                assert_eq!(
                    table_size(&cfg, n),
                    table_size_reference(&cfg, n),
                    "{cfg:?}, {n} backends"
                );
            }
        }
    }

    #[test]
    fn maglev_table_size_is_prime_and_scales_with_backends() {
        let cfg = HUNDRED;
        assert_eq!(table_size(&cfg, 0), 0);
        assert_eq!(table_size(&cfg, 1), 101);
        assert_eq!(table_size(&cfg, 3), 307);
        assert_eq!(table_size(&cfg, 4), 401);
        assert_eq!(table_size(&cfg, 10), 1009);
        assert_eq!(table_size(&cfg, 10_000), 65521);
        let small = MaglevConfig {
            slots_per_backend: 100,
            max_table_size: 1000,
        };
        assert_eq!(table_size(&small, 50), 997);
        // A table keeps its size while every backend has >= 75 slots and it is at most four
        // times the fresh size: 10 -> 13 (a 25% surge) keeps 1009; 14 resizes.
        assert_eq!(resize(&cfg, 1009, 13), 1009);
        assert_eq!(resize(&cfg, 1009, 14), 1409);
        assert_eq!(resize(&cfg, 1009, 3), 1009);
        assert_eq!(resize(&cfg, 1009, 2), 211);
        assert_eq!(resize(&cfg, 1009, 0), 0);
        assert_eq!(resize(&cfg, 0, 10), 1009);
        // At the cap, the capped size is always enough.
        assert_eq!(resize(&cfg, 65521, 1000), 65521);
    }

    /// The original formulation of the fill (a division per probe): `build` must give the
    /// same tables, slot for slot (every node, whatever its version, builds the same table).
    fn build_reference(seed: u32, keys: &[Vec<u8>], size: u32) -> Vec<u32> {
        let m = size as u64;
        let (order, perms) = permutations(seed, keys, m);
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

    #[test]
    fn maglev_build_matches_the_reference_formula() {
        for (n, size) in [
            (1, 1),
            (1, 2),
            (2, 3),
            (3, 101),
            (10, 1009),
            (10, 3203),
            (33, 3301),
        ] {
            for seed in [0, 7, 0x5eed_1b00] {
                assert_eq!(
                    build(seed, &keys(n), size),
                    build_reference(seed, &keys(n), size),
                    "n={n} size={size} seed={seed}"
                );
            }
        }
    }

    #[test]
    fn maglev_every_slot_names_a_backend() {
        let t = build(7, &keys(5), 503);
        assert_eq!(t.len(), 503);
        assert!(t.iter().all(|&b| b < 5));
    }

    #[test]
    fn maglev_balance_within_a_few_percent() {
        for (cfg, n) in [MaglevConfig::default(), HUNDRED]
            .into_iter()
            .flat_map(|c| [2usize, 3, 4, 10, 33].map(|n| (c, n)))
        {
            let size = table_size(&cfg, n);
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
    /// table of `n` backends of `size` slots (adding it back moves the same slots).
    fn disruption(n: usize, removed: usize, seed: u32, size: u32) -> f64 {
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

    /// (mean, 95th percentile, worst) disruption over N = 2..=40, every removed backend
    /// position class (first, middle, last) and `seeds` seeds, at `slots_per_backend` x N.
    fn disruption_figures(cfg: &MaglevConfig, seeds: u32) -> (f64, f64, f64) {
        let mut all = Vec::new();
        for n in 2..=40usize {
            for seed in 0..seeds {
                for removed in [0, n / 2, n - 1] {
                    all.push(disruption(n, removed, seed, table_size(cfg, n)));
                }
            }
        }
        all.sort_by(f64::total_cmp);
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        (mean, all[all.len() * 95 / 100], all[all.len() - 1])
    }

    /// Disruption at the default size and at 100 slots a backend: the mean stays within
    /// ~2% and 95% of the cases within 5%. Measured (5 seeds; `MaglevConfig`'s docs quote
    /// them): 100 x N mean 2.39%, p95 3.41%, worst 7.06%; 200 x N mean 1.62%, p95 2.24%,
    /// worst 5.05%; the former 200 x N-rounded-to-a-power-of-two mean 1.42%, worst 4.94%.
    #[test]
    fn maglev_disruption_on_remove_and_add_is_small() {
        for (what, cfg) in [
            ("the default size", MaglevConfig::default()),
            ("100 x N", HUNDRED),
        ] {
            let (mean, p95, worst) = disruption_figures(&cfg, 5);
            println!(
                "maglev disruption at {what} ({cfg:?}): mean {:.2}%, p95 {:.2}%, worst {:.2}%",
                mean * 100.0,
                p95 * 100.0,
                worst * 100.0
            );
            assert!(mean <= 0.025, "{what}: mean disruption {mean:.4}");
            assert!(p95 <= 0.05, "{what}: 95th percentile {p95:.4}");
            assert!(worst <= 0.10, "{what}: worst disruption {worst:.4}");
        }
        // The common demo case: 4 backends, one removed.
        for removed in 0..4 {
            let d = disruption(4, removed, 1, table_size(&HUNDRED, 4));
            assert!(d <= 0.03, "4 backends, removing #{removed}: {d:.4}");
        }
    }

    /// Measurement, not a check: disruption by table size (`--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement behind the MaglevConfig doc figures, not a check (140 table \
                builds per size); run with --ignored --nocapture"]
    fn maglev_disruption_by_table_size() {
        for spb in [50, 75, 100, 125, 150, 200, 400] {
            let cfg = MaglevConfig {
                slots_per_backend: spb,
                max_table_size: 65521,
            };
            let (mean, p95, worst) = disruption_figures(&cfg, 20);
            println!(
                "{spb:>4} x N (N=10: {:>5} slots): mean {:.2}%, p95 {:.2}%, worst {:.2}%",
                table_size(&cfg, 10),
                mean * 100.0,
                p95 * 100.0,
                worst * 100.0
            );
        }
    }
}
