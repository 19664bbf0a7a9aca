//! The internet checksum (RFC 1071), written from scratch for the lab so that checks of the
//! data path's checksum code do not reuse that code.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A running one's complement sum of 16-bit big-endian words (RFC 1071).
///
/// Data may be added in chunks of any length: an odd trailing byte is paired with the first
/// byte of the next chunk, as if all chunks were one buffer; [`Checksum::finish`] pads a final
/// odd byte with zero.
#[derive(Clone, Copy, Debug, Default)]
pub struct Checksum {
    sum: u64,
    pending: Option<u8>,
}

impl Checksum {
    /// An empty sum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes to the sum.
    pub fn add(&mut self, mut data: &[u8]) -> &mut Self {
        if let Some(high) = self.pending.take() {
            match data.split_first() {
                Some((&low, rest)) => {
                    self.sum += u64::from(u16::from_be_bytes([high, low]));
                    data = rest;
                }
                None => {
                    self.pending = Some(high);
                    return self;
                }
            }
        }
        let mut words = data.chunks_exact(2);
        for word in &mut words {
            self.sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            self.pending = Some(*last);
        }
        self
    }

    /// Adds a 16-bit word (must be at an even offset of the summed data).
    pub fn add_u16(&mut self, word: u16) -> &mut Self {
        self.add(&word.to_be_bytes())
    }

    /// Adds a 32-bit value as two 16-bit words.
    pub fn add_u32(&mut self, value: u32) -> &mut Self {
        self.add(&value.to_be_bytes())
    }

    /// The folded one's complement sum (not complemented).
    pub fn sum16(&self) -> u16 {
        let mut sum = self.sum;
        if let Some(high) = self.pending {
            sum += u64::from(u16::from_be_bytes([high, 0]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        // The loop leaves at most 0xffff.
        u16::try_from(sum).unwrap_or(u16::MAX)
    }

    /// The checksum: the complement of the folded sum.
    pub fn finish(&self) -> u16 {
        !self.sum16()
    }
}

/// The internet checksum of `data` (RFC 1071): the complement of the one's complement sum of
/// its 16-bit big-endian words, an odd last byte padded with zero.
pub fn internet_checksum(data: &[u8]) -> u16 {
    Checksum::new().add(data).finish()
}

/// A sum started with the IPv4 pseudo-header (RFC 793 / RFC 768): source, destination, zero,
/// protocol and the transport length.
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> Checksum {
    let mut c = Checksum::new();
    c.add(&src.octets())
        .add(&dst.octets())
        .add(&[0, protocol])
        .add_u16(length);
    c
}

/// A sum started with the IPv6 pseudo-header (RFC 8200 section 8.1): source, destination,
/// upper-layer length (32 bits), three zero bytes and the next header value.
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> Checksum {
    let mut c = Checksum::new();
    c.add(&src.octets())
        .add(&dst.octets())
        .add_u32(length)
        .add(&[0, 0, 0, next_header]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: the sum of these bytes is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Checksum::new().add(&data).sum16(), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn chunking_does_not_matter() {
        let data: Vec<u8> = (0u8..=250).collect();
        let whole = internet_checksum(&data);
        for split in 0..data.len() {
            let (a, b) = data.split_at(split);
            let mut c = Checksum::new();
            c.add(a).add(&[]).add(b);
            assert_eq!(c.finish(), whole, "split at {split}");
        }
    }

    #[test]
    fn odd_length_is_zero_padded() {
        assert_eq!(internet_checksum(&[0xab]), internet_checksum(&[0xab, 0x00]));
    }

    #[test]
    fn known_ipv4_header() {
        // A textbook IPv4 header (Wikipedia "IPv4 header checksum") with checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn carries_fold() {
        assert_eq!(Checksum::new().add(&[0xff; 64]).sum16(), 0xffff);
        assert_eq!(internet_checksum(&[0xff, 0xff, 0x00, 0x01]), 0xfffe);
    }
}
