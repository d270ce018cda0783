//! A TCP proxy in front of a database server, which a test can cut off: every open connection
//! is closed and new ones are refused until it is resumed, as when the server goes away.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    upstream: SocketAddr,
    /// `true` while the proxy forwards; connections end when it turns `false`.
    open: Arc<watch::Sender<bool>>,
    accepting: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, _) = watch::channel(true);
        let open = Arc::new(open);
        let accepting = Some(tokio::spawn(accept(listener, upstream, open.clone())));
        Proxy {
            port,
            upstream,
            open,
            accepting,
        }
    }

    /// Closes every connection and stops listening: connects are refused.
    pub fn cut(&mut self) {
        self.open.send_replace(false);
        if let Some(task) = self.accepting.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.open.send_replace(true);
        self.accepting = Some(tokio::spawn(accept(
            listener,
            self.upstream,
            self.open.clone(),
        )));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, open: Arc<watch::Sender<bool>>) {
    while let Ok((mut client, _)) = listener.accept().await {
        let mut closed = open.subscribe();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = closed.wait_for(|open| !*open) => {}
            }
        });
    }
}
