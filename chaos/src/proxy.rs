//! A fault-injecting TCP proxy: one per link in the chaos drills.
//!
//! Each proxy forwards one listening port to one target. Faults:
//! - **cut**: existing connections are closed and new ones are closed on
//!   accept, so both directions of the link fail fast (a partition);
//! - **delay + jitter**: every chunk is held for `delay ± jitter` before it is
//!   forwarded. Chunks of one direction stay in order (TCP semantics), so the
//!   jitter shows up as bursts, as on a congested path.
//!
//! A proxy is a test double for the *network*, never for the thing under test:
//! nodes and clients speak real gRPC through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct Faults {
    cut: AtomicBool,
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
}

/// A running proxy. Dropping it stops accepting (open connections end when
/// their peers close).
#[derive(Debug)]
pub struct Proxy {
    pub listen: SocketAddr,
    pub target: String,
    faults: Arc<Faults>,
    /// Bumped on every cut: connection tasks watch it and close.
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Proxy {
    /// Listens on `listen` (port 0 = any) and forwards to `target`.
    pub async fn start(listen: SocketAddr, target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let faults = Arc::new(Faults::default());
        let (generation, _) = watch::channel(0u64);
        let gen_tx = generation.clone();
        let f = faults.clone();
        let tgt = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                if f.cut.load(Ordering::Relaxed) {
                    drop(inbound);
                    continue;
                }
                let f = f.clone();
                let tgt = tgt.clone();
                let gen_rx = gen_tx.subscribe();
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let Ok(outbound) = TcpStream::connect(&tgt).await else {
                        return;
                    };
                    let _ = outbound.set_nodelay(true);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let a = pump(ri, wo, f.clone(), gen_rx.clone());
                    let b = pump(ro, wi, f, gen_rx);
                    // Either direction ending ends the connection.
                    tokio::select! {
                        _ = a => {}
                        _ = b => {}
                    }
                });
            }
        });
        Ok(Proxy {
            listen,
            target,
            faults,
            generation,
            task,
        })
    }

    /// Cuts the link (closing open connections) or restores it.
    pub fn set_cut(&self, cut: bool) {
        self.faults.cut.store(cut, Ordering::Relaxed);
        if cut {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    pub fn is_cut(&self) -> bool {
        self.faults.cut.load(Ordering::Relaxed)
    }

    /// Delays every forwarded chunk by `delay ± jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.faults
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
        self.faults
            .jitter_us
            .store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    /// Back to a clean link.
    pub fn heal(&self) {
        self.set_cut(false);
        self.set_delay(Duration::ZERO, Duration::ZERO);
    }
}

/// Copies one direction, applying the faults, until EOF, an error or a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<Faults>,
    mut generation: watch::Receiver<u64>,
) {
    generation.mark_unchanged();
    let mut buf = vec![0u8; 64 << 10];
    // Chunks are released no earlier than the previous one: order is kept.
    let mut not_before = tokio::time::Instant::now();
    loop {
        let n = tokio::select! {
            _ = generation.changed() => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let delay = faults.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            let jitter = faults.jitter_us.load(Ordering::Relaxed);
            let d = if jitter > 0 {
                let j = rand::random_range(0..=2 * jitter) as i64 - jitter as i64;
                (delay as i64 + j).max(0) as u64
            } else {
                delay
            };
            let at = (tokio::time::Instant::now() + Duration::from_micros(d)).max(not_before);
            not_before = at;
            tokio::select! {
                _ = generation.changed() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        if faults.cut.load(Ordering::Relaxed) || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        Ok(b.to_vec())
    }

    #[tokio::test]
    async fn forwards_cuts_heals_and_delays() {
        let target = echo_server().await;
        let p = Proxy::start("127.0.0.1:0".parse().expect("addr"), target.to_string())
            .await
            .expect("proxy");
        assert_eq!(roundtrip(p.listen).await.expect("forwarded"), b"ping");
        // An open connection dies when the link is cut.
        let mut open = TcpStream::connect(p.listen).await.expect("connect");
        open.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        open.read_exact(&mut b).await.expect("echo");
        p.set_cut(true);
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "cut connection should close: {r:?}"
        );
        assert!(
            roundtrip(p.listen).await.is_err(),
            "new connections fail while cut"
        );
        p.heal();
        assert_eq!(roundtrip(p.listen).await.expect("healed"), b"ping");
        p.set_delay(Duration::from_millis(100), Duration::ZERO);
        let t0 = std::time::Instant::now();
        roundtrip(p.listen).await.expect("delayed");
        // Two hops (there and back), 100 ms each.
        assert!(
            t0.elapsed() >= Duration::from_millis(190),
            "{:?}",
            t0.elapsed()
        );
    }
}
