//! The lab's errors: what failed (a command, a system call, an argument the lab cannot
//! use), named with the step that needed it. Callers match on the kind or print it; the text
//! carries the whole cause, so a test's `unwrap` says what to fix. The side-by-side
//! benchmark's driver (`bench::compare`), which runs in labs, reports its failures with it
//! too, through [`Context`], [`bail!`](crate::bail) and [`ensure!`](crate::ensure), and so
//! does the demo's driver, inside its own error (`demo::Error`).

use std::{error::Error as StdError, process::ExitStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tool (`ip`, `ethtool`, `nsenter`, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}): {detail}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        /// Its stderr (or stdout when stderr is empty), trimmed.
        detail: String,
    },
    /// An argument or a state the lab cannot work with, or an answer it did not expect.
    #[error("{0}")]
    Invalid(String),
    /// `what` failed because of `cause` (a system call, a parse, a step of the lab).
    #[error("{what}: {cause}")]
    Failed {
        what: String,
        cause: Box<dyn StdError + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step an error happened in (as `anyhow::Context`, for the lab's typed error).
pub trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: StdError + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Failed {
            what: what.into(),
            cause: Box::new(e),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Failed {
            what: what().into(),
            cause: Box::new(e),
        })
    }
}

/// A missing value is an [`Error::Invalid`] naming what was missing.
impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(what.into()))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::Invalid(what().into()))
    }
}

/// Returns an [`Error::Invalid`] with a formatted message.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($arg)*)).into())
    };
}

/// Returns an [`Error::Invalid`] with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

pub use crate::{bail, ensure};
