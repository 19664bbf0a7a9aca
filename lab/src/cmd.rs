//! Running external tools (`ip`, `ethtool`, `nsenter`, ...) with useful errors.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use crate::error::{Context as _, Error, Result};

/// Renders a command line for error messages: program and arguments, space separated.
pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with stdin closed, returning its stdout.
///
/// A failure to start or a non-zero exit becomes an error naming the command line, the exit
/// status and the (trimmed) stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    tracing::debug!(command = %line, "running");
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail = if stderr.trim().is_empty() {
            stdout.trim().to_owned()
        } else {
            stderr.trim().to_owned()
        };
        return Err(Error::CommandFailed {
            command: line,
            status: out.status,
            detail,
        });
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Runs a program in the current namespaces, returning its stdout.
pub(crate) fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(Command::new(program).args(args))
}
