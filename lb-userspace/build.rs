//! Builds the eBPF programs (`lb-ebpf`, target `bpfel-unknown-none`, nightly with
//! `-Z build-std=core`, linked by bpf-linker) and puts the object in `OUT_DIR`, where
//! `src/object.rs` embeds it. `cargo xtask setup` installs the toolchain pieces this needs.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("lb-userspace has no parent directory")?;
    let ebpf = root.join("lb-ebpf");
    for p in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-ebpf/Cargo.lock",
        "lb-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF in the object gives the verifier's messages source context.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // The outer (stable) build's settings must not leak into the nightly bpf build.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    for (key, _) in env::vars() {
        if key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}); run `cargo xtask setup` to install \
             the nightly rust-src component and bpf-linker"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/lb-ebpf");
    std::fs::copy(&obj, out_dir.join("sluice.bpf.o"))
        .with_context(|| format!("copying {}", obj.display()))?;
    Ok(())
}
