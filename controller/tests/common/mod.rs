//! Helpers shared by the agent's integration tests.

use tower::ServiceExt as _;

/// `GET path` on a router without a socket: (status, body).
pub async fn get(router: &axum::Router, path: &str) -> (u16, Vec<u8>) {
    let r = router
        .clone()
        .oneshot(
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, body.to_vec())
}
