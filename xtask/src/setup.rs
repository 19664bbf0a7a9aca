//! Idempotent machine setup: Debian packages, the nightly toolchain with rust-src, a
//! bpf-linker linked against the nightly toolchain's own LLVM (TOOLCHAIN.md), bpffs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The toolchain that builds the eBPF programs (lb-userspace/build.rs uses the same name).
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages used by the build, the tests and the lab.
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "procps",
    // `cargo xtask bench compare` and `bench sync`: kube-proxy's rule shapes, side by side.
    "iptables",
    "nftables",
    // The load tool's and the demo's charts (bench::chart) draw text with this font.
    "fonts-dejavu-core",
];

pub fn run() -> Result<()> {
    packages()?;
    toolchain()?;
    bpf_linker()?;
    bpffs()?;
    println!("setup: ok");
    Ok(())
}

pub fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("Debian packages {missing:?} are missing; run `cargo xtask setup` as root");
    }
    println!("setup: installing {missing:?}");
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn toolchain() -> Result<()> {
    let list = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !list.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        println!("setup: installing the {EBPF_TOOLCHAIN} toolchain");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to {EBPF_TOOLCHAIN}");
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    Ok(())
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// LLVM major version of the eBPF toolchain's compiler.
fn llvm_major() -> Result<String> {
    let v = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .arg("-vV"),
    )?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV shows no LLVM version")?;
    Ok(line.split('.').next().unwrap_or_default().to_string())
}

fn bpf_linker() -> Result<()> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or(home()?.join(".cargo"));
    let bin = cargo_home.join("bin/bpf-linker");
    let major = llvm_major()?;
    // Working means: runs, and was built for this LLVM (we record it next to the prefix).
    let prefix = home()?.join(".cache/sluice/llvm");
    let stamp = prefix.join("llvm-major");
    let works = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if works
        && std::fs::read_to_string(&stamp)
            .map(|s| s.trim() == major)
            .unwrap_or(false)
    {
        return Ok(());
    }
    println!("setup: building bpf-linker against the {EBPF_TOOLCHAIN} toolchain's LLVM {major}");
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib.display()))?;
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in [
        libllvm
            .file_name()
            .context("libLLVM has no file name")?
            .to_os_string(),
        "libLLVM.so".into(),
    ] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    std::fs::write(&stamp, &major)?;
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    if !is_root() {
        println!(
            "setup: bpffs is not mounted at /sys/fs/bpf (needs root); tests that pin will fail"
        );
        return Ok(());
    }
    sh(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
