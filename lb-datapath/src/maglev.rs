//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): each backend walks the table in
//! its own permutation and takes turns claiming slots, so every backend owns ~1/N of the
//! slots and adding or removing one backend moves few slots owned by the others.
//!
//! The table is computed here, in userspace; the data path only reads `slot -> backend`.

use crate::config::MaglevConfig;

/// The backend counts at which a table's size steps up: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...
/// (powers of two and 1.5 x powers of two). A table is sized for the smallest step >= its
/// backend count, so between two steps (e.g. 9..=12, 13..=16) adding or removing a backend
/// keeps the size and moves few slots, and crossing a step (12 -> 13) rebuilds the table at
/// the next size. Each step is at most 1.5 x the previous one: a table holds 1 to 1.5 x
/// `slots_per_backend` slots a backend.
///
/// (A floor, e.g. one size for 1..=4 backends, would spare small services their rebuilds
/// but was measured worse: 3 backends in 601 slots is one of Maglev's rare unlucky tables,
/// 16% disruption for one seed.)
pub fn size_step(backends: usize) -> u64 {
    if backends <= 2 {
        return backends as u64;
    }
    let n = backends as u64;
    let pow = n.next_power_of_two();
    let three_halves = pow / 4 * 3;
    if n <= three_halves { three_halves } else { pow }
}

/// The table size for `backends` backends, a pure function of that count (every node, and
/// a restarted agent, sizes a service's table the same way whatever its history): the
/// smallest prime >= slots_per_backend x [`size_step`]`(backends)`, capped at the largest
/// prime <= max_table_size; 0 for none.
pub fn table_size(cfg: &MaglevConfig, backends: usize) -> u32 {
    if backends == 0 {
        return 0;
    }
    let max = cfg.max_table_size.max(2);
    let want = (cfg.slots_per_backend.max(1) as u64).saturating_mul(size_step(backends));
    // The cap (a prime search down from max_table_size, hundreds of divisions) only when
    // no prime lies between the wanted size and max_table_size.
    if want <= max as u64
        && let Some(p) = (want.max(2) as u32..=max).find(|&c| is_prime(c))
    {
        return p;
    }
    prev_prime(max)
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

    /// The worst case asserted (the target is 5%, see `MaglevConfig`).
    const WORST: f64 = 0.05;

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
        let step = [
            1u64, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
        ]
        .into_iter()
        .chain((10..40).flat_map(|k| [3u64 << (k - 1), 1 << k]))
        .find(|&s| s >= backends as u64)
        .expect("in range");
        let want = (cfg.slots_per_backend.max(1) as u64 * step).min(cap as u64) as u32;
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
    fn maglev_table_size_is_prime_and_depends_only_on_the_backend_count() {
        let cfg = HUNDRED;
        assert_eq!(table_size(&cfg, 0), 0);
        assert_eq!(table_size(&cfg, 1), 101);
        assert_eq!(table_size(&cfg, 3), 307);
        assert_eq!(table_size(&cfg, 4), 401);
        assert_eq!(table_size(&cfg, 5), 601);
        // 9..=12 backends share one size, 13..=16 the next.
        assert_eq!(table_size(&cfg, 9), 1201);
        assert_eq!(table_size(&cfg, 10), 1201);
        assert_eq!(table_size(&cfg, 12), 1201);
        assert_eq!(table_size(&cfg, 13), 1601);
        assert_eq!(table_size(&cfg, 16), 1601);
        assert_eq!(table_size(&cfg, 10_000), 65521);
        let small = MaglevConfig {
            slots_per_backend: 100,
            max_table_size: 1000,
        };
        assert_eq!(table_size(&small, 50), 997);
        // The default: 10 backends get 150 x 12 -> 1801 slots.
        assert_eq!(table_size(&MaglevConfig::default(), 10), 1801);
        for n in 5..2000 {
            let step = size_step(n);
            assert!(step >= n as u64 && 2 * step <= 3 * n as u64, "{n}: {step}");
        }
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

    /// Disruption of one backend added or removed as the data path sees it: a table for `n`
    /// backends against the one for `n - 1` (backend `removed` gone), each at the size
    /// [`table_size`] gives its count. `None` when the two sizes differ (a step crossed: the
    /// table is rebuilt at the new size, see [`size_step`]).
    fn disruption_at(cfg: &MaglevConfig, n: usize, removed: usize, seed: u32) -> Option<f64> {
        let size = table_size(cfg, n);
        (size == table_size(cfg, n - 1)).then(|| disruption(n, removed, seed, size))
    }

    /// (mean, 95th percentile, worst, steps crossed) over N = 2..=40 backends before the
    /// change, every removed position class (first, middle, last) and `seeds` seeds.
    fn disruption_figures(cfg: &MaglevConfig, seeds: u32) -> (f64, f64, f64, usize) {
        let (mut all, mut crossed) = (Vec::new(), 0);
        for n in 2..=40usize {
            for seed in 0..seeds {
                for removed in [0, n / 2, n - 1] {
                    match disruption_at(cfg, n, removed, seed) {
                        Some(d) => all.push(d),
                        None => crossed += 1,
                    }
                }
            }
        }
        all.sort_by(f64::total_cmp);
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        (
            mean,
            all[all.len() * 95 / 100],
            all[all.len() - 1],
            crossed / 3 / seeds as usize,
        )
    }

    /// Disruption at the default size: the targets are a mean <= 2% and a worst case <= 5%.
    /// Measured with 20 seeds (`maglev_disruption_by_table_size` prints these): see
    /// `MaglevConfig`'s docs.
    #[test]
    fn maglev_disruption_on_remove_and_add_is_small() {
        let cfg = MaglevConfig::default();
        let (mean, p95, worst, crossed) = disruption_figures(&cfg, 20);
        println!(
            "maglev disruption at {cfg:?}: mean {:.2}%, p95 {:.2}%, worst {:.2}%, {crossed} of \
             39 counts cross a size step",
            mean * 100.0,
            p95 * 100.0,
            worst * 100.0
        );
        assert!(mean <= 0.02, "mean disruption {mean:.4}");
        assert!(p95 <= 0.05, "95th percentile {p95:.4}");
        assert!(worst <= WORST, "worst disruption {worst:.4}");
        // Within a step, e.g. 12 -> 11 -> 10 -> 9 (one size): every backend of one table.
        for n in [10, 11, 12] {
            for removed in 0..n {
                let d = disruption_at(&cfg, n, removed, 1).expect("same size");
                assert!(d <= 0.03, "{n} backends, removing #{removed}: {d:.4}");
            }
        }
    }

    /// Measurement, not a check: disruption by table size (`--ignored --nocapture`).
    #[test]
    #[ignore = "a measurement behind the MaglevConfig doc figures, not a check (thousands of \
                table builds per size); run with --ignored --nocapture"]
    fn maglev_disruption_by_table_size() {
        for spb in [100, 125, 150, 175, 200, 250] {
            let cfg = MaglevConfig {
                slots_per_backend: spb,
                max_table_size: 65521,
            };
            let (mean, p95, worst, crossed) = disruption_figures(&cfg, 20);
            println!(
                "{spb:>4} x step (N=10: {:>5} slots): mean {:.2}%, p95 {:.2}%, worst {:.2}%, \
                 {crossed} steps",
                table_size(&cfg, 10),
                mean * 100.0,
                p95 * 100.0,
                worst * 100.0
            );
        }
    }
}
