//! Health checks against real listeners on loopback: up, down, and flapping within the
//! thresholds (an endpoint changes state only after enough consecutive results).

use std::net::{IpAddr, Ipv4Addr};

use controller::health::{Probe, Tracker};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// An HTTP server on loopback answering every request with `status`.
async fn http_server(status: u16) -> (u16, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    (port, h)
}

fn probe(kind: &str, port: u16) -> Probe {
    Probe::parse(&format!(r#"{{"{kind}": {{"port": {port}}}, "timeoutSeconds": 1, "successThreshold": 2, "failureThreshold": 3}}"#)).unwrap()
}

#[tokio::test]
async fn health_tcp_probe_up_and_down() {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let p = probe("tcpSocket", l.local_addr().unwrap().port());
    assert!(p.check(LO).await.is_ok());
    // Down: a port this test holds bound but does not listen on (so no other test or process
    // can be listening there), which the kernel refuses.
    let down = tokio::net::TcpSocket::new_v4().unwrap();
    down.bind((LO, 0).into()).unwrap();
    let p = probe("tcpSocket", down.local_addr().unwrap().port());
    let e = p.check(LO).await.unwrap_err();
    assert!(e.contains("refused"), "{e}");
}

#[tokio::test]
async fn health_http_probe_passes_2xx_3xx_and_fails_5xx() {
    let (ok, _a) = http_server(200).await;
    let (redirect, _b) = http_server(302).await;
    let (bad, _c) = http_server(503).await;
    assert!(probe("httpGet", ok).check(LO).await.is_ok());
    assert!(probe("httpGet", redirect).check(LO).await.is_ok());
    assert_eq!(
        probe("httpGet", bad).check(LO).await.unwrap_err(),
        "HTTP status 503"
    );
}

#[tokio::test]
async fn health_probe_times_out_on_a_silent_server() {
    let l = TcpListener::bind((LO, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s); // accept, never answer
        }
    });
    let e = probe("httpGet", port).check(LO).await.unwrap_err();
    assert!(e.contains("timed out"), "{e}");
}

/// Up after 2 consecutive successes, down after 3 consecutive failures; alternating
/// results (flapping within the thresholds) change nothing.
#[test]
fn health_thresholds_absorb_flapping() {
    let p = probe("tcpSocket", 80);
    let mut t = Tracker::default();
    assert!(!t.record(&p, true), "one success is not enough");
    assert!(t.record(&p, true) && t.ready);
    for ok in [false, true, false, false, true, false, true] {
        assert!(!t.record(&p, ok), "flapping within thresholds");
        assert!(t.ready);
    }
    assert!(!t.record(&p, false));
    assert!(!t.record(&p, false));
    assert!(t.record(&p, false) && !t.ready, "three failures in a row");
}

#[test]
fn health_probe_declarations_are_validated() {
    for bad in [
        r#"{"tcpSocket": {"port": 0}}"#,
        r#"{}"#,
        r#"{"tcpSocket": {"port": 80}, "httpGet": {"port": 80}}"#,
        r#"{"httpGet": {"port": 80, "path": "no-slash"}}"#,
        r#"{"tcpSocket": {"port": 80}, "periodSeconds": 0}"#,
        r#"{"tcpSocket": {"port": 80}, "bogus": 1}"#,
    ] {
        assert!(Probe::parse(bad).is_err(), "{bad}");
    }
}
