//! The baseline of `lab-server`'s hand-rolled HTTP/1.1 path: the same answer (`200`, body
//! `NAME\n`, keep-alive) served by hyper, so the two can be loaded side by side with
//! `sluice-load` (see docs/benchmarks.md, "lab-server beside hyper").
//!
//! `cargo run --release -p bench --example hyper_backend -- NAME [ADDR]` prints
//! `listening ADDR` and serves until killed (ADDR defaults to 127.0.0.1:0).

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "hyper".into());
    let addr: SocketAddr = args
        .next()
        .map(|a| a.parse().expect("ADDR as IP:PORT"))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(addr).await?;
    println!("listening {}", listener.local_addr()?);
    let body = Bytes::from(format!("{name}\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let answer = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("Content-Type", "text/plain")
                            .body(Full::new(body))
                            .expect("a valid response"),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}
