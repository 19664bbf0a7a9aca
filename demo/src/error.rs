//! The demo's error: the walkthrough was interrupted (Ctrl-C, SIGTERM: everything is cleaned
//! up and the driver exits 130), or a step of it failed ([`lab::Error`]: what failed and
//! why).

use crate::interrupt::Interrupted;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Failed(#[from] lab::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether an interrupt ended the walkthrough, also when a step that named itself
    /// wraps it.
    pub fn interrupted(&self) -> bool {
        match self {
            Error::Interrupted(_) => true,
            Error::Failed(lab::Error::Failed { cause, .. }) => {
                cause.is::<Interrupted>()
                    || cause
                        .downcast_ref::<Error>()
                        .is_some_and(Error::interrupted)
            }
            Error::Failed(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use lab::error::Context as _;

    use super::*;

    #[test]
    fn an_interrupt_is_told_apart_from_a_failure_also_inside_a_named_step() {
        let plain: Error = Interrupted.into();
        assert!(plain.interrupted());
        let named: Error = Err::<(), _>(Interrupted)
            .context("waiting for the rollout")
            .unwrap_err()
            .into();
        assert!(named.interrupted());
        assert_eq!(
            named.to_string(),
            format!("waiting for the rollout: {Interrupted}")
        );
        let nested: Error = Err::<(), Error>(Interrupted.into())
            .context("step 7")
            .unwrap_err()
            .into();
        assert!(nested.interrupted());
        let failed: Error = lab::Error::Invalid("no pod web-1".into()).into();
        assert!(!failed.interrupted());
    }
}
