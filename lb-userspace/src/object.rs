//! The eBPF object built by `build.rs`.

/// The ELF object holding sluice's programs and map definitions.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));
