//! The eBPF object built by `build.rs`.

/// The ELF object holding sluice's programs and map definitions.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice.bpf.o"));

/// Loads the object with its map definitions as declared and loads (verifies) the one XDP
/// program `name`, for the stand-alone programs (the pass stub, the benchmarks' baseline,
/// generator and sink). Nothing is attached.
pub(crate) fn load_xdp(name: &'static str) -> Result<aya::Ebpf, crate::error::Error> {
    use crate::error::Error;
    let mut ebpf = aya::Ebpf::load(OBJECT).map_err(|e| Error::Load { source: e.into() })?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::program(name, "find", "not in the object"))?
        .try_into()
        .map_err(|e| Error::program(name, "open", e))?;
    crate::attach::with_retry(|| prog.load())
        .map_err(|e| Error::program(name, "load (verifier)", e))?;
    Ok(ebpf)
}

/// The loaded XDP program `name` of `ebpf`.
pub(crate) fn xdp<'a>(
    ebpf: &'a aya::Ebpf,
    name: &'static str,
) -> Result<&'a aya::programs::Xdp, crate::error::Error> {
    ebpf.program(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| crate::error::Error::program(name, "find", "not loaded"))
}
