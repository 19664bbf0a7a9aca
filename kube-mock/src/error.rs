//! Errors of the public API, and the API server's `Status` failures.

use serde_json::{Value, json};

use crate::resource::ResourceType;

/// What the crate's functions return on failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a file or a socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document could not be parsed.
    #[error("{context}: {source}")]
    Yaml {
        /// Which document.
        context: String,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// A JSON value could not be (de)serialised.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The object lacks `apiVersion`, `kind` or `metadata.name`, or has the wrong shape.
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The kind (or plural, or apiVersion/kind pair) is not one the mock serves.
    #[error("unknown resource: {0}")]
    UnknownResource(String),
    /// The (mock or real) API server refused the operation, with its `Status`.
    #[error("api server said {code} {reason}: {message}")]
    Api {
        /// HTTP status code, e.g. 404 or 409.
        code: u16,
        /// The Status reason, e.g. `NotFound`, `AlreadyExists`, `Conflict`.
        reason: String,
        /// The Status message.
        message: String,
    },
    /// A wait did not see its condition in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
    /// The kube client failed.
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    /// Building a kube client from a kubeconfig failed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// Starting or talking to the envtest processes failed.
    #[error("envtest: {0}")]
    Envtest(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure the mock API server answers with a `Status` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `(name, plural, group)` for `details`.
    pub details: Option<(String, &'static str, &'static str)>,
}

/// `services` or `deployments.apps`, as the API server names a resource in messages.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_string()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

impl ApiError {
    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(rt)),
            details: Some((name.to_string(), rt.plural, rt.group)),
        }
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(rt)),
            details: Some((name.to_string(), rt.plural, rt.group)),
        }
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                qualified(rt)
            ),
            details: Some((name.to_string(), rt.plural, rt.group)),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    pub fn invalid(rt: &ResourceType, name: &str, message: impl Into<String>) -> Self {
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {}", rt.kind, message.into()),
            details: Some((name.to_string(), rt.plural, rt.group)),
        }
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("the body of the request was in an unknown format: {content_type}"),
            details: None,
        }
    }

    pub fn path_not_found() -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".to_string(),
            details: None,
        }
    }

    pub fn method_not_allowed() -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: None,
        }
    }

    /// The `410 Expired` a watch from a compacted resourceVersion gets.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            details: None,
        }
    }

    /// The `Status` object, exactly as the API server serialises it.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((name, plural, group)) = &self.details {
            let mut details = json!({"name": name, "kind": plural});
            if !group.is_empty() {
                details["group"] = json!(group);
            }
            status["details"] = details;
        }
        status
    }

    /// As this crate's public error.
    pub fn into_error(self) -> Error {
        Error::Api {
            code: self.code,
            reason: self.reason.to_string(),
            message: self.message,
        }
    }
}
