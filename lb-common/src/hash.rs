//! The flow hash that picks a selection-table slot. Kernel and userspace share it, so tests
//! can predict the backend of a flow, and every node with the same seed picks the same one.

#[inline(always)]
const fn mix(h: u32, w: u32) -> u32 {
    let k = w
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow: both addresses (raw words), both ports (raw) and the protocol.
#[inline(always)]
pub const fn flow_hash(
    seed: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let mut h = seed;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, (sport as u32) << 16 | dport as u32);
    h = mix(h, proto as u32);
    finish(h)
}

/// Hash of a client address alone (ClientIP session affinity).
#[inline(always)]
pub const fn client_hash(seed: u32, src: &[u32; 4]) -> u32 {
    let mut h = seed ^ 0x5bd1_e995;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    finish(h)
}
