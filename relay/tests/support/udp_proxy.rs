//! A UDP proxy on loopback standing between a WebRTC peer and the relay, that a test can cut
//! (drop every packet both ways) and restore: an ICE blip, or a peer that vanishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A running proxy: packets to [`UdpProxy::addr`] go to the target; the target's replies go
/// back to whoever sent last.
pub struct UdpProxy {
    /// Where peers send to instead of the target.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl UdpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("proxy front socket");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("proxy back socket");
        let addr = front.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (task_cut, task_dropped) = (Arc::clone(&cut), Arc::clone(&dropped));
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if task_cut.load(Ordering::Acquire) {
                            task_dropped.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let _ = back.send_to(&a[..n], target).await;
                        }
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { continue };
                        match client {
                            Some(c) if !task_cut.load(Ordering::Acquire) => {
                                let _ = front.send_to(&b[..n], c).await;
                            }
                            _ => {
                                task_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        });
        Self {
            addr,
            cut,
            dropped,
            task,
        }
    }

    /// Drops every packet, both ways, from now on (until [`UdpProxy::restore`]).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }

    /// Packets dropped while cut.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
