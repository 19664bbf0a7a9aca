//! The one call site of the raw `bpf(2)` system call, for the commands aya does not offer
//! in the form needed here: `BPF_MAP_GET_NEXT_KEY` into a caller's key (`ct_gc`),
//! `BPF_OBJ_GET` and `BPF_LINK_DETACH` of a pinned link (`stale_link`), `BPF_PROG_TEST_RUN`
//! on a program fd of its own (`testrun`).

use std::io;

/// `bpf(cmd, attr, size_of::<A>())`: the non-negative result, or the errno as an error.
///
/// # Safety
/// `attr` must be a valid `union bpf_attr` prefix for `cmd`, and every pointer in it valid
/// (for the sizes it states) for the duration of the call.
pub(crate) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: per the contract.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
