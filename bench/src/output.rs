//! Where the benchmarks write their results: `target/bench/<name>.json` under the workspace
//! root, pretty-printed with a trailing newline.

use std::{io, path::PathBuf};

/// `target/bench` under the workspace root (created).
pub fn dir() -> io::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .ok_or_else(|| io::Error::other("the bench crate has no parent directory"))?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes `report` to `target/bench/<name>.json`; returns the path.
pub fn write_json(name: &str, report: &impl serde::Serialize) -> io::Result<PathBuf> {
    let path = dir()?.join(format!("{name}.json"));
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    std::fs::write(&path, json + "\n")?;
    Ok(path)
}

/// A benchmark binary's exit status: success, or `<name>: FAILED: <error and its causes>` on
/// stderr and failure (the alternate form: an `anyhow::Error` prints its whole chain).
pub fn exit_status<E: std::fmt::Display>(
    name: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: FAILED: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
