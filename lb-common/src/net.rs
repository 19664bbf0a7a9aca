//! Addresses and ports exactly as they sit in a packet (network byte order).

/// An IPv4 or IPv6 address, as the 16 bytes of an IPv6 address; IPv4 is stored
/// IPv4-mapped (`::ffff:a.b.c.d`), so one key type serves both families.
///
/// The words hold the raw memory of the address (network byte order), as read from a packet.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct NetAddr {
    pub words: [u32; 4],
}

/// The third word of an IPv4-mapped address, `00 00 ff ff` in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

impl NetAddr {
    /// `::`, the IPv6 unspecified address (the IPv6 NodePort wildcard).
    pub const UNSPECIFIED: NetAddr = NetAddr { words: [0; 4] };
    /// `::ffff:0.0.0.0`, the IPv4 unspecified address mapped (the IPv4 NodePort wildcard).
    pub const V4_UNSPECIFIED: NetAddr = NetAddr::from_v4_raw(0);

    /// From an IPv4 address as read raw from a packet (network byte order in memory).
    #[inline(always)]
    pub const fn from_v4_raw(raw: u32) -> Self {
        NetAddr {
            words: [0, 0, V4_MAPPED_WORD, raw],
        }
    }

    #[inline(always)]
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Self::from_v4_raw(u32::from_ne_bytes(o))
    }

    #[inline(always)]
    pub const fn from_v6_octets(o: [u8; 16]) -> Self {
        NetAddr {
            words: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }

    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == V4_MAPPED_WORD
    }

    /// The raw IPv4 word (network byte order in memory); meaningful only if [`Self::is_v4`].
    #[inline(always)]
    pub const fn v4_raw(&self) -> u32 {
        self.words[3]
    }

    pub const fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.words[i].to_ne_bytes();
            out[i * 4] = b[0];
            out[i * 4 + 1] = b[1];
            out[i * 4 + 2] = b[2];
            out[i * 4 + 3] = b[3];
            i += 1;
        }
        out
    }
}

/// A TCP/UDP port in network byte order, as it sits in a packet.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct NetPort(pub u16);

impl NetPort {
    /// From a port number in host order.
    #[inline(always)]
    pub const fn new(host: u16) -> Self {
        NetPort(host.to_be())
    }

    /// The port number in host order.
    #[inline(always)]
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }

    /// The raw value as read from a packet.
    #[inline(always)]
    pub const fn raw(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The XDP program picks the NodePort wildcard by `is_v4` of the destination.
    #[test]
    fn ipv6_nodeport_wildcards_are_one_per_family() {
        assert!(NetAddr::V4_UNSPECIFIED.is_v4());
        assert_eq!(NetAddr::V4_UNSPECIFIED.v4_raw(), 0);
        assert!(!NetAddr::UNSPECIFIED.is_v4());
        assert_ne!(NetAddr::V4_UNSPECIFIED, NetAddr::UNSPECIFIED);
    }
}
