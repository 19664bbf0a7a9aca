//! The graceful-shutdown lifecycle the lab's servers share (`lab-server` here, the demo's
//! bootcamp pods): serving, then draining (listeners closed, each connection closes after its
//! next answer), then stopped.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::watch,
};

/// How long a closing connection waits for the peer to close its side.
pub const LINGER: Duration = Duration::from_secs(1);

/// Lifecycle, broadcast to every task; phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Listeners closed; connections close after their next answer.
    Draining,
    /// Everything still open closes now.
    Stopped,
}

/// Completes once `phase` (or a later one) is reached, or when the server is gone.
pub async fn reached(receiver: &mut watch::Receiver<Phase>, phase: Phase) {
    // The guard `wait_for` returns must not live across an await: drop it here.
    let _ = receiver.wait_for(|p| *p >= phase).await;
}

/// Closes our side after a final answer, then reads and discards what the peer still sends
/// until it closes too (bounded by [`LINGER`] and the stop), so the answer is not lost to a
/// reset.
pub async fn linger_close(stream: &mut TcpStream, phase: &mut watch::Receiver<Phase>) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0; 1024];
    let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
    tokio::select! {
        () = drain => {}
        () = tokio::time::sleep(LINGER) => {}
        () = reached(phase, Phase::Stopped) => {}
    }
}
