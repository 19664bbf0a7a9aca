//! The demo's control traffic (the agent's API, the pods' probe and counter endpoints) goes
//! through the agent's one HTTP client ([`controller::http_client`]): one blocking request,
//! the whole answer. Sockets belong to the network namespace of the thread that creates
//! them, so callers run these functions on a thread inside the right namespace
//! ([`lab::Netns::enter`]).

pub use controller::http_client::{Failure, Response, request};
