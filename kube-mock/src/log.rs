//! The log of requests the mock answered, which tests count and wait on.

/// What a request did, in the API server's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `GET` of a collection.
    List,
    /// `GET` of a collection with `watch=true`.
    Watch,
    /// `GET` of one object (or its status).
    Get,
    /// `POST` to a collection.
    Create,
    /// `PUT` of an object (or its status).
    Update,
    /// `PATCH` of an object (or its status).
    Patch,
    /// `DELETE` of an object.
    Delete,
    /// Anything else (`/version`, health checks, unknown paths).
    Other,
}

/// One request the mock answered (requests refused while [down] are not logged).
///
/// [down]: crate::MockApiServer::set_down
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `"GET"`.
    pub method: String,
    /// The URL path.
    pub path: String,
    /// The raw query string (`""` if none).
    pub query: String,
    /// What the request did.
    pub verb: Verb,
    /// The plural of the resource (`"services"`), if the path named a served resource.
    pub resource: Option<&'static str>,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object name in the path, if any.
    pub name: Option<String>,
    /// Whether the path ended in `/status`.
    pub status_subresource: bool,
}

impl RequestRecord {
    /// The value of query parameter `key`, percent-decoded.
    pub fn query_param(&self, key: &str) -> Option<String> {
        crate::routes::query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}
