//! A TCP proxy on loopback that a test can cut: what one instance sees of a network partition
//! (its connections to Redis or the database end, new ones are refused or hang) while every
//! other client of the same server goes on. A stand-in for a network fault, which cannot be
//! made here otherwise; the servers behind it are real.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Link {
    /// Forwards both ways.
    Up = 0,
    /// Ends every open connection and refuses new ones at once (a restart, a firewall reset).
    Refused = 1,
    /// Ends every open connection; new ones are accepted and never answered (packets dropped).
    Silent = 2,
}

pub struct Proxy {
    pub addr: SocketAddr,
    link: Arc<AtomicU8>,
    /// Bumped on every cut: open connections watch it and end.
    cuts: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let link = Arc::new(AtomicU8::new(Link::Up as u8));
        let (cuts, _) = watch::channel(0u64);
        let (state, watcher) = (Arc::clone(&link), cuts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut = watcher.subscribe();
                match state.load(Ordering::SeqCst) {
                    0 => {}
                    1 => {
                        drop(client);
                        continue;
                    }
                    _ => {
                        // Held open and never answered until the next cut or restore ends it.
                        tokio::spawn(async move {
                            let _ = cut.changed().await;
                            drop(client);
                        });
                        continue;
                    }
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            link,
            cuts,
            task,
        }
    }

    /// `redis://127.0.0.1:<port>` of the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Changes what the proxy does; any change ends the connections open now.
    pub fn set(&self, link: Link) {
        self.link.store(link as u8, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cuts.send_modify(|n| *n += 1);
        self.task.abort();
    }
}
