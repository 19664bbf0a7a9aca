//! Removing a pinned link for good: the ingress link of the other mode that a previous run
//! left (an XDP link when attaching in TC mode, a TCX ingress link when attaching XDP).
//!
//! Unpinning alone detaches a link only once every file descriptor of it is closed, and a
//! process still running (an agent being replaced) may hold one; `BPF_LINK_DETACH` detaches
//! it at once, whoever holds it. aya exposes neither `BPF_OBJ_GET` as a plain fd nor
//! `BPF_LINK_DETACH`, so both are called here.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the link pinned at `path` and removes the pin. `Ok(false)`: nothing pinned there.
/// A link that cannot be detached at once (a kernel without `BPF_LINK_DETACH` for its
/// kind) is still unpinned, and goes when its last holder closes it: logged.
pub(crate) fn remove(path: &Path) -> io::Result<bool> {
    let fd = match obj_get(path) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    let detached = link_detach(&fd);
    std::fs::remove_file(path)?;
    if let Err(e) = detached {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "unpinned a stale link that could not be detached at once; it goes when its last holder closes it"
        );
    }
    Ok(true)
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_OBJ_GET; `pathname` points to a
    // NUL-terminated string that outlives the call.
    let r = unsafe { crate::bpf_sys::bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn link_detach(fd: &OwnedFd) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: fd.as_raw_fd() as u32,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for BPF_LINK_DETACH.
    unsafe { crate::bpf_sys::bpf(BPF_LINK_DETACH, &mut attr) }.map(|_| ())
}
