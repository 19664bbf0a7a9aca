//! What `/proc` says about the agent: memory (`status`), CPU time (`stat`) and the kernel
//! memory of the BPF maps it holds (`fdinfo` of its `bpf-map` descriptors).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

/// Resident memory, KiB, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: everything resident (anonymous, file and shared-memory pages).
    pub vm_rss: u64,
    /// `RssAnon`: the heap and stacks.
    pub rss_anon: u64,
    /// `RssFile`: file-backed pages, which include the mmap'ed BPF arrays (map memory counted
    /// a second time) and the binary's text.
    pub rss_file: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        vm_rss: field("VmRSS"),
        rss_anon: field("RssAnon"),
        rss_file: field("RssFile"),
    })
}

/// utime + stime of the whole process (every thread), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')'"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let num = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {}", i + 3))
    };
    Ok(num(11)? + num(12)?)
}

/// Clock ticks per second (`_SC_CLK_TCK`).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// One BPF map the process holds a descriptor of.
#[derive(Clone, Debug)]
pub struct BpfMap {
    pub id: u32,
    pub map_type: u32,
    pub max_entries: u64,
    /// `memlock`: the kernel's accounting of the map's memory, bytes.
    pub memlock: u64,
}

/// Every distinct BPF map (by id) the process holds a descriptor of, from
/// `/proc/<pid>/fdinfo`.
pub fn bpf_maps(pid: u32) -> Result<Vec<BpfMap>> {
    let dir = format!("/proc/{pid}/fd");
    let mut maps = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(&info) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let id = u32::try_from(field("map_id:")).unwrap_or(0);
        maps.insert(
            id,
            BpfMap {
                id,
                map_type: u32::try_from(field("map_type:")).unwrap_or(0),
                max_entries: field("max_entries:"),
                memlock: field("memlock:"),
            },
        );
    }
    Ok(maps.into_values().collect())
}

/// Map names by id from `bpftool -j map show`, if bpftool is installed (names only: the
/// figures come from fdinfo).
pub fn bpftool_names() -> BTreeMap<u32, String> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
    else {
        return BTreeMap::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return BTreeMap::new();
    };
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let id = u32::try_from(m.get("id")?.as_u64()?).ok()?;
            Some((id, m.get("name")?.as_str()?.to_string()))
        })
        .collect()
}
